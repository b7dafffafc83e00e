/*
 * tally-certs — the certificates a cluster's TLS needs (rpc/tls.h).
 *
 *   tally-certs init --dir D --nodes N   a new CA and node certificates 1..N
 *   tally-certs ca   --dir D             a new CA: D/ca.pem, D/ca.key
 *   tally-certs node --dir D --id N      D/node-N.pem and D/node-N.key, signed by D's CA
 *
 * Keys are Ed25519, written with mode 0600; certificates 0644. Nothing that exists is
 * overwritten (init keeps an existing CA and skips nodes that have their files). A node
 * certificate's subject CN is "tally-node-<id>": the id raft peers check. Validity:
 * --days (CA 3650, node 825 by default). Keep ca.key off the nodes: it makes members.
 *
 * Exit status: 0 done, 1 failed (the reason on stderr), 2 usage.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "rpc/tls.h"

#define CERTS_SERIAL_BYTES 16
#define CERTS_CA_DAYS 3650
#define CERTS_NODE_DAYS 825
#define CERTS_NODES_MAX 1000

static void usage(void)
{
	fprintf(stderr, "usage: tally-certs init --dir D --nodes N [--days N]\n"
			"       tally-certs ca   --dir D [--days N]\n"
			"       tally-certs node --dir D --id N [--days N]\n");
	exit(2);
}

static int fail(const char *what, const char *path)
{
	unsigned long e = ERR_get_error();
	fprintf(stderr, "tally-certs: %s %s: %s\n", what, path,
		e != 0 ? ERR_error_string(e, NULL) : errno != 0 ? strerror(errno) : "failed");
	return -1;
}

/* Writes a PEM object to a new file of the given mode (never an existing one). */
static int write_pem(const char *path, mode_t mode, EVP_PKEY *key, X509 *cert)
{
	errno = 0;
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
	if (fd < 0)
		return fail("create", path);
	FILE *f = fdopen(fd, "w");
	if (f == NULL) {
		close(fd);
		return fail("open", path);
	}
	int ok = key != NULL ? PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL)
			     : PEM_write_X509(f, cert);
	if (fclose(f) != 0 || ok != 1) {
		unlink(path);
		return fail("write", path);
	}
	return 0;
}

static EVP_PKEY *read_key(const char *path)
{
	FILE *f = fopen(path, "r");
	EVP_PKEY *k = f != NULL ? PEM_read_PrivateKey(f, NULL, NULL, NULL) : NULL;
	if (f != NULL)
		fclose(f);
	if (k == NULL)
		fail("read key", path);
	return k;
}

static X509 *read_cert(const char *path)
{
	FILE *f = fopen(path, "r");
	X509 *c = f != NULL ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
	if (f != NULL)
		fclose(f);
	if (c == NULL)
		fail("read certificate", path);
	return c;
}

static int add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
	X509V3_CTX v3;
	X509V3_set_ctx(&v3, issuer, cert, NULL, NULL, 0);
	X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
	int ok = ext != NULL && X509_add_ext(cert, ext, -1) == 1;
	X509_EXTENSION_free(ext);
	return ok ? 0 : -1;
}

/* A certificate for `key` named cn, signed by issuer_key (self-signed when issuer is
 * NULL), valid from an hour ago (clock skew) for `days`. */
static X509 *make_cert(EVP_PKEY *key, const char *cn, X509 *issuer, EVP_PKEY *issuer_key,
		       unsigned days, bool ca)
{
	X509 *c = X509_new();
	unsigned char serial[CERTS_SERIAL_BYTES];
	BIGNUM *bn = NULL;
	int ok = c != NULL && RAND_bytes(serial, sizeof(serial)) == 1;
	serial[0] &= 0x7f; /* a positive serial */
	ok = ok && (bn = BN_bin2bn(serial, sizeof(serial), NULL)) != NULL &&
	     BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(c)) != NULL;
	BN_free(bn);
	ok = ok && X509_set_version(c, 2) == 1 &&
	     X509_gmtime_adj(X509_getm_notBefore(c), -3600) != NULL &&
	     X509_gmtime_adj(X509_getm_notAfter(c), (long)days * 86400) != NULL &&
	     X509_set_pubkey(c, key) == 1;
	X509_NAME *name = ok ? X509_get_subject_name(c) : NULL;
	ok = ok && X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, (const unsigned char *)"Tally",
					      -1, -1, 0) == 1 &&
	     X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1,
					0) == 1;
	X509 *iss = issuer != NULL ? issuer : c;
	ok = ok && X509_set_issuer_name(c, X509_get_subject_name(iss)) == 1;
	if (ca)
		ok = ok && add_ext(c, iss, NID_basic_constraints, "critical,CA:TRUE,pathlen:0") == 0 &&
		     add_ext(c, iss, NID_key_usage, "critical,keyCertSign,cRLSign") == 0;
	else
		ok = ok && add_ext(c, iss, NID_basic_constraints, "critical,CA:FALSE") == 0 &&
		     add_ext(c, iss, NID_key_usage, "critical,digitalSignature") == 0 &&
		     add_ext(c, iss, NID_ext_key_usage, "serverAuth,clientAuth") == 0;
	ok = ok && add_ext(c, iss, NID_subject_key_identifier, "hash") == 0 &&
	     X509_sign(c, issuer_key != NULL ? issuer_key : key, NULL) > 0;
	if (!ok) {
		X509_free(c);
		return NULL;
	}
	return c;
}

static void join(char *out, size_t cap, const char *dir, const char *name)
{
	int n = snprintf(out, cap, "%s/%s", dir, name);
	if (n < 0 || (size_t)n >= cap) {
		fprintf(stderr, "tally-certs: path too long: %s/%s\n", dir, name);
		exit(1);
	}
}

static int make_ca(const char *dir, unsigned days)
{
	char cert_path[PATH_MAX], key_path[PATH_MAX];
	join(cert_path, sizeof(cert_path), dir, "ca.pem");
	join(key_path, sizeof(key_path), dir, "ca.key");
	EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
	X509 *cert = key != NULL ? make_cert(key, "Tally cluster CA", NULL, NULL, days, true) : NULL;
	int rc = cert == NULL ? fail("make", cert_path)
		 : write_pem(key_path, 0600, key, NULL) != 0 ? -1
							      : write_pem(cert_path, 0644, NULL, cert);
	X509_free(cert);
	EVP_PKEY_free(key);
	if (rc == 0)
		printf("%s\n%s\n", cert_path, key_path);
	return rc;
}

static int make_node(const char *dir, uint64_t id, unsigned days, bool skip_existing)
{
	char name[64], cert_path[PATH_MAX], key_path[PATH_MAX], ca_path[PATH_MAX], cakey_path[PATH_MAX];
	snprintf(name, sizeof(name), "node-%" PRIu64 ".pem", id);
	join(cert_path, sizeof(cert_path), dir, name);
	snprintf(name, sizeof(name), "node-%" PRIu64 ".key", id);
	join(key_path, sizeof(key_path), dir, name);
	if (skip_existing && access(cert_path, F_OK) == 0 && access(key_path, F_OK) == 0)
		return 0;
	join(ca_path, sizeof(ca_path), dir, "ca.pem");
	join(cakey_path, sizeof(cakey_path), dir, "ca.key");
	X509 *ca = read_cert(ca_path);
	EVP_PKEY *ca_key = ca != NULL ? read_key(cakey_path) : NULL;
	EVP_PKEY *key = ca_key != NULL ? EVP_PKEY_Q_keygen(NULL, NULL, "ED25519") : NULL;
	char cn[64];
	snprintf(cn, sizeof(cn), TALLY_TLS_CN_PREFIX "%" PRIu64, id);
	X509 *cert = key != NULL ? make_cert(key, cn, ca, ca_key, days, false) : NULL;
	int rc = ca_key == NULL ? -1
		 : cert == NULL ? fail("make", cert_path)
		 : write_pem(key_path, 0600, key, NULL) != 0 ? -1
							      : write_pem(cert_path, 0644, NULL, cert);
	X509_free(cert);
	EVP_PKEY_free(key);
	EVP_PKEY_free(ca_key);
	X509_free(ca);
	if (rc == 0)
		printf("%s\n%s\n", cert_path, key_path);
	return rc;
}

int main(int argc, char **argv)
{
	if (argc < 2)
		usage();
	const char *cmd = argv[1], *dir = NULL;
	uint64_t id = 0, nodes = 0;
	long days = 0;
	static const struct option longs[] = {{"dir", required_argument, NULL, 'd'},
					       {"id", required_argument, NULL, 'i'},
					       {"nodes", required_argument, NULL, 'n'},
					       {"days", required_argument, NULL, 'D'},
					       {NULL, 0, NULL, 0}};
	int c;
	optind = 2;
	while ((c = getopt_long(argc, argv, "", longs, NULL)) != -1) {
		if (c == 'd')
			dir = optarg;
		else if (c == 'i')
			id = strtoull(optarg, NULL, 10);
		else if (c == 'n')
			nodes = strtoull(optarg, NULL, 10);
		else if (c == 'D')
			days = strtol(optarg, NULL, 10);
		else
			usage();
	}
	if (dir == NULL || optind != argc || days < 0 || days > 36500)
		usage();
	if (mkdir(dir, 0700) != 0 && errno != EEXIST)
		return fail("mkdir", dir), 1;
	if (strcmp(cmd, "ca") == 0)
		return make_ca(dir, days > 0 ? (unsigned)days : CERTS_CA_DAYS) == 0 ? 0 : 1;
	if (strcmp(cmd, "node") == 0) {
		if (id == 0)
			usage();
		return make_node(dir, id, days > 0 ? (unsigned)days : CERTS_NODE_DAYS, false) == 0 ? 0 : 1;
	}
	if (strcmp(cmd, "init") != 0 || nodes == 0 || nodes > CERTS_NODES_MAX)
		usage();
	char ca_path[PATH_MAX];
	join(ca_path, sizeof(ca_path), dir, "ca.pem");
	if (access(ca_path, F_OK) != 0 && make_ca(dir, CERTS_CA_DAYS) != 0)
		return 1;
	for (uint64_t i = 1; i <= nodes; i++)
		if (make_node(dir, i, days > 0 ? (unsigned)days : CERTS_NODE_DAYS, true) != 0)
			return 1;
	return 0;
}
