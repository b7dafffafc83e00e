/*
 * rpc/tls — TLS 1.3 contexts and a socket-free session engine over memory BIOs.
 */
#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "rpc/tls.h"

#define TLS_EXPORTER_LABEL "EXPORTER-tally-key-proof"
#define TLS_CN_BYTES_MAX 64

struct tally_tls_ctx {
	SSL_CTX *ssl;
};

struct tally_tls {
	SSL *ssl;
	BIO *in;  /* bytes from the peer, read by OpenSSL */
	BIO *out; /* bytes for the peer, written by OpenSSL */
	enum tally_tls_mode mode;
	bool done;         /* handshake complete and the peer checked */
	uint64_t peer_id;  /* the peer certificate's node id; 0 = none */
	char error[TALLY_TLS_ERROR_BYTES];
};

/* The reason OpenSSL left on its error queue, or `what` when it left none. */
static void tls_reason(char *err, size_t errcap, const char *what)
{
	unsigned long e = ERR_get_error();
	if (e == 0) {
		snprintf(err, errcap, "%s", what);
	} else {
		char buf[TALLY_TLS_ERROR_BYTES];
		ERR_error_string_n(e, buf, sizeof(buf));
		snprintf(err, errcap, "%s: %s", what, buf);
	}
	ERR_clear_error();
}

uint64_t tally_tls_cn_id(const char *cn)
{
	size_t plen = strlen(TALLY_TLS_CN_PREFIX);
	if (cn == NULL || strncmp(cn, TALLY_TLS_CN_PREFIX, plen) != 0)
		return 0;
	const char *p = cn + plen;
	if (*p < '1' || *p > '9')
		return 0;
	uint64_t id = 0;
	for (; *p != '\0'; p++) {
		if (*p < '0' || *p > '9' || id > (UINT64_MAX - 9) / 10)
			return 0;
		id = id * 10 + (uint64_t)(*p - '0');
	}
	return id;
}

/* The node id a certificate's subject names; 0 when it names none. */
static uint64_t tls_cert_id(X509 *cert)
{
	char cn[TLS_CN_BYTES_MAX + 1];
	X509_NAME *name = cert != NULL ? X509_get_subject_name(cert) : NULL;
	if (name == NULL ||
	    X509_NAME_get_text_by_NID(name, NID_commonName, cn, sizeof(cn)) <= 0)
		return 0;
	return tally_tls_cn_id(cn);
}

static struct tally_tls_ctx *tls_ctx_base(const char *ca_file, char *err, size_t errcap)
{
	ERR_clear_error();
	struct tally_tls_ctx *c = calloc(1, sizeof(*c));
	if (c == NULL) {
		snprintf(err, errcap, "out of memory");
		return NULL;
	}
	c->ssl = SSL_CTX_new(TLS_method());
	if (c->ssl == NULL || SSL_CTX_set_min_proto_version(c->ssl, TLS1_3_VERSION) != 1) {
		tls_reason(err, errcap, "TLS context");
		tally_tls_ctx_free(c);
		return NULL;
	}
	if (SSL_CTX_load_verify_locations(c->ssl, ca_file, NULL) != 1) {
		char what[TALLY_TLS_ERROR_BYTES];
		snprintf(what, sizeof(what), "CA %.100s", ca_file);
		tls_reason(err, errcap, what);
		tally_tls_ctx_free(c);
		return NULL;
	}
	SSL_CTX_set_verify_depth(c->ssl, 1); /* the CA signs every node directly */
	(void)SSL_CTX_set_num_tickets(c->ssl, 0); /* no resumption: nothing to cache */
	SSL_CTX_set_mode(c->ssl, SSL_MODE_RELEASE_BUFFERS);
	return c;
}

/* Checks at load time what a peer would otherwise find out at its first handshake. */
static int tls_ctx_check_own(struct tally_tls_ctx *c, const char *cert_file, uint64_t id,
			     char *err, size_t errcap)
{
	X509 *cert = SSL_CTX_get0_certificate(c->ssl);
	X509_STORE_CTX *vc = X509_STORE_CTX_new();
	int ok = vc != NULL && X509_STORE_CTX_init(vc, SSL_CTX_get_cert_store(c->ssl), cert, NULL) == 1
			 ? X509_verify_cert(vc)
			 : -1;
	if (ok != 1) {
		snprintf(err, errcap, "certificate %.100s: not signed by the cluster CA (%s)", cert_file,
			 vc != NULL ? X509_verify_cert_error_string(X509_STORE_CTX_get_error(vc))
				    : "out of memory");
		X509_STORE_CTX_free(vc);
		return -1;
	}
	X509_STORE_CTX_free(vc);
	uint64_t named = tls_cert_id(cert);
	if (named == 0 || (id > 0 && named != id)) {
		snprintf(err, errcap,
			 "certificate %.100s: names %s%" PRIu64 ", not node %" PRIu64
			 " (subject CN must be " TALLY_TLS_CN_PREFIX "<id>)",
			 cert_file, TALLY_TLS_CN_PREFIX, named, id);
		return -1;
	}
	return 0;
}

/* The ALPN protocol a node's raft port agrees on when a connecting node offers it. */
static const unsigned char tls_alpn_raft[] = "\x0c" TALLY_TLS_ALPN_RAFT;

static int tls_alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
			   const unsigned char *in, unsigned int inlen, void *arg)
{
	(void)ssl, (void)arg;
	unsigned char *chosen = NULL;
	if (SSL_select_next_proto(&chosen, outlen, tls_alpn_raft, sizeof(tls_alpn_raft) - 1, in,
				  inlen) != OPENSSL_NPN_NEGOTIATED)
		return SSL_TLSEXT_ERR_NOACK; /* a client, or a node of an earlier version */
	*out = chosen;
	return SSL_TLSEXT_ERR_OK;
}

int tally_tls_ctx_node(struct tally_tls_ctx **out, const char *ca_file, const char *cert_file,
		       const char *key_file, uint64_t id, char *err, size_t errcap)
{
	assert(out != NULL && ca_file != NULL && cert_file != NULL && key_file != NULL);
	*out = NULL;
	struct tally_tls_ctx *c = tls_ctx_base(ca_file, err, errcap);
	if (c == NULL)
		return -1;
	char what[TALLY_TLS_ERROR_BYTES];
	if (SSL_CTX_use_certificate_chain_file(c->ssl, cert_file) != 1) {
		snprintf(what, sizeof(what), "certificate %.100s", cert_file);
		goto fail;
	}
	if (SSL_CTX_use_PrivateKey_file(c->ssl, key_file, SSL_FILETYPE_PEM) != 1) {
		snprintf(what, sizeof(what), "key %.100s", key_file);
		goto fail;
	}
	if (SSL_CTX_check_private_key(c->ssl) != 1) {
		snprintf(what, sizeof(what), "key %.100s does not match the certificate", key_file);
		goto fail;
	}
	if (tls_ctx_check_own(c, cert_file, id, err, errcap) != 0) {
		tally_tls_ctx_free(c);
		return -1;
	}
	SSL_CTX_set_alpn_select_cb(c->ssl, tls_alpn_select, NULL);
	*out = c;
	return 0;
fail:
	tls_reason(err, errcap, what);
	tally_tls_ctx_free(c);
	return -1;
}

int tally_tls_ctx_client(struct tally_tls_ctx **out, const char *ca_file, char *err,
			 size_t errcap)
{
	assert(out != NULL && ca_file != NULL);
	*out = tls_ctx_base(ca_file, err, errcap);
	return *out != NULL ? 0 : -1;
}

void tally_tls_ctx_free(struct tally_tls_ctx *ctx)
{
	if (ctx == NULL)
		return;
	SSL_CTX_free(ctx->ssl);
	free(ctx);
}

struct tally_tls *tally_tls_new(struct tally_tls_ctx *ctx, enum tally_tls_mode mode)
{
	assert(ctx != NULL && ctx->ssl != NULL);
	struct tally_tls *t = calloc(1, sizeof(*t));
	if (t == NULL)
		return NULL;
	t->mode = mode;
	t->ssl = SSL_new(ctx->ssl);
	t->in = BIO_new(BIO_s_mem());
	t->out = BIO_new(BIO_s_mem());
	if (t->ssl == NULL || t->in == NULL || t->out == NULL) {
		BIO_free(t->in);
		BIO_free(t->out);
		SSL_free(t->ssl);
		free(t);
		ERR_clear_error();
		return NULL;
	}
	BIO_set_mem_eof_return(t->in, -1); /* empty means "wait for more", not EOF */
	BIO_set_mem_eof_return(t->out, -1);
	SSL_set_bio(t->ssl, t->in, t->out); /* the SSL owns both from here */
	bool accept = mode == TALLY_TLS_PEER_ACCEPT || mode == TALLY_TLS_CLIENT_ACCEPT;
	int verify = mode == TALLY_TLS_CLIENT_ACCEPT ? SSL_VERIFY_NONE
		     : mode == TALLY_TLS_PEER_ACCEPT
			     ? SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT
			     : SSL_VERIFY_PEER;
	SSL_set_verify(t->ssl, verify, NULL);
	if (mode == TALLY_TLS_PEER_CONNECT &&
	    SSL_set_alpn_protos(t->ssl, tls_alpn_raft, sizeof(tls_alpn_raft) - 1) != 0) {
		tally_tls_free(t);
		ERR_clear_error();
		return NULL;
	}
	if (accept)
		SSL_set_accept_state(t->ssl);
	else
		SSL_set_connect_state(t->ssl);
	return t;
}

void tally_tls_free(struct tally_tls *t)
{
	if (t == NULL)
		return;
	SSL_free(t->ssl);
	free(t);
}

void tally_tls_feed(struct tally_tls *t, const void *in, size_t len)
{
	assert(t != NULL && (in != NULL || len == 0));
	while (len > 0) {
		int chunk = len > INT32_MAX ? INT32_MAX : (int)len;
		int n = BIO_write(t->in, in, chunk);
		assert(n == chunk); /* a memory BIO takes everything or aborts on OOM */
		if (n <= 0)
			return;
		in = (const uint8_t *)in + n;
		len -= (size_t)n;
	}
}

size_t tally_tls_pending(const struct tally_tls *t)
{
	assert(t != NULL);
	return BIO_ctrl_pending(t->out);
}

size_t tally_tls_take(struct tally_tls *t, void *buf, size_t cap)
{
	assert(t != NULL && buf != NULL);
	size_t got = 0;
	if (cap == 0 || BIO_read_ex(t->out, buf, cap, &got) != 1)
		return 0;
	return got;
}

static enum tally_tls_status tls_fail(struct tally_tls *t, const char *what)
{
	if (t->error[0] == '\0')
		tls_reason(t->error, sizeof(t->error), what);
	ERR_clear_error();
	return TALLY_TLS_FAILED;
}

/* After the handshake: a node on both ends of a raft connection and at the far end of
 * a client's; the certificate chain was checked by OpenSSL already. */
static enum tally_tls_status tls_check_peer(struct tally_tls *t)
{
	if (t->mode == TALLY_TLS_CLIENT_ACCEPT)
		return TALLY_TLS_DONE;
	long v = SSL_get_verify_result(t->ssl);
	if (v != X509_V_OK) {
		snprintf(t->error, sizeof(t->error), "peer certificate: %s",
			 X509_verify_cert_error_string(v));
		return TALLY_TLS_FAILED;
	}
	t->peer_id = tls_cert_id(SSL_get0_peer_certificate(t->ssl));
	if (t->peer_id == 0) {
		snprintf(t->error, sizeof(t->error), "peer certificate names no tally node");
		return TALLY_TLS_FAILED;
	}
	return TALLY_TLS_DONE;
}

enum tally_tls_status tally_tls_handshake(struct tally_tls *t)
{
	assert(t != NULL);
	if (t->done)
		return TALLY_TLS_DONE;
	if (t->error[0] != '\0')
		return TALLY_TLS_FAILED;
	ERR_clear_error();
	int rc = SSL_do_handshake(t->ssl);
	if (rc != 1) {
		int e = SSL_get_error(t->ssl, rc);
		if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
			return TALLY_TLS_AGAIN;
		long v = SSL_get_verify_result(t->ssl);
		if (v != X509_V_OK && t->mode != TALLY_TLS_CLIENT_ACCEPT) {
			snprintf(t->error, sizeof(t->error), "TLS handshake: peer certificate: %s",
				 X509_verify_cert_error_string(v));
			ERR_clear_error();
			return TALLY_TLS_FAILED;
		}
		return tls_fail(t, "TLS handshake");
	}
	enum tally_tls_status s = tls_check_peer(t);
	t->done = s == TALLY_TLS_DONE;
	return s;
}

bool tally_tls_done(const struct tally_tls *t)
{
	assert(t != NULL);
	return t->done;
}

enum tally_tls_status tally_tls_read(struct tally_tls *t, void *buf, size_t cap, size_t *got)
{
	assert(t != NULL && buf != NULL && got != NULL && cap > 0);
	assert(t->done);
	*got = 0;
	if (t->error[0] != '\0')
		return TALLY_TLS_FAILED;
	ERR_clear_error();
	if (SSL_read_ex(t->ssl, buf, cap, got) == 1)
		return TALLY_TLS_DONE;
	int e = SSL_get_error(t->ssl, 0);
	if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
		return TALLY_TLS_AGAIN;
	if (e == SSL_ERROR_ZERO_RETURN)
		return TALLY_TLS_CLOSED;
	return tls_fail(t, "TLS read");
}

int tally_tls_write(struct tally_tls *t, const void *buf, size_t len)
{
	assert(t != NULL && (buf != NULL || len == 0));
	assert(t->done);
	if (t->error[0] != '\0')
		return -1;
	ERR_clear_error();
	size_t wrote = 0;
	if (len > 0 && (SSL_write_ex(t->ssl, buf, len, &wrote) != 1 || wrote != len)) {
		(void)tls_fail(t, "TLS write");
		return -1;
	}
	return 0;
}

bool tally_tls_alpn_raft(const struct tally_tls *t)
{
	assert(t != NULL);
	const unsigned char *p = NULL;
	unsigned len = 0;
	SSL_get0_alpn_selected(t->ssl, &p, &len);
	return t->done && len == sizeof(tls_alpn_raft) - 2 &&
	       memcmp(p, tls_alpn_raft + 1, len) == 0;
}

uint64_t tally_tls_peer_id(const struct tally_tls *t)
{
	assert(t != NULL);
	return t->peer_id;
}

int tally_tls_exporter(struct tally_tls *t, uint8_t out[TALLY_TLS_EXPORTER_BYTES])
{
	assert(t != NULL && out != NULL);
	if (!t->done)
		return -1;
	int rc = SSL_export_keying_material(t->ssl, out, TALLY_TLS_EXPORTER_BYTES,
					    TLS_EXPORTER_LABEL, strlen(TLS_EXPORTER_LABEL), NULL, 0, 0);
	ERR_clear_error();
	return rc == 1 ? 0 : -1;
}

const char *tally_tls_error(const struct tally_tls *t)
{
	assert(t != NULL);
	return t->error;
}
