/*
 * rpc/connect — a tool's cluster, key and CA from flags or the environment (connect.h).
 */
#include "rpc/connect.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "rpc/keys.h"

#define CODE(name) TALLY__V1__RESULT_CODE__##name

void tally_connect_from_env(struct tally_connect *c)
{
	assert(c != NULL);
	const char *insecure = getenv("TALLY_INSECURE");
	*c = (struct tally_connect){
		.cluster = getenv("TALLY_CLUSTER"), .key_file = getenv("TALLY_KEY_FILE"),
		.key_dir = getenv("TALLY_KEY_DIR"), .ca = getenv("TALLY_CA"),
		.insecure = insecure != NULL && strcmp(insecure, "1") == 0,
	};
}

int tally_connect_flag(struct tally_connect *c, int argc, char **argv, int i)
{
	assert(c != NULL && argv != NULL && i < argc);
	static const char *const names[] = {"--cluster", "--key-file", "--key-dir", "--key", "--ca"};
	const char **slots[] = {&c->cluster, &c->key_file, &c->key_dir, &c->key, &c->ca};
	if (strcmp(argv[i], "--insecure") == 0) {
		c->insecure = true;
		return 1;
	}
	for (size_t k = 0; k < sizeof(names) / sizeof(names[0]); k++) {
		if (strcmp(argv[i], names[k]) != 0)
			continue;
		if (i + 1 >= argc)
			return -1;
		*slots[k] = argv[i + 1];
		return 2;
	}
	return 0;
}

Tally__V1__ResultCode tally_connect_open(const struct tally_connect *c, const char *tool,
					 const char *default_key, struct tally_client_options o,
					 struct tally_client **out, char *err, size_t errcap)
{
	assert(c != NULL && tool != NULL && out != NULL && err != NULL);
	if (c->cluster == NULL || (c->key_file == NULL && c->key_dir == NULL)) {
		snprintf(err, errcap, "--cluster and --key-file or --key-dir (or TALLY_CLUSTER and "
				      "TALLY_KEY_FILE or TALLY_KEY_DIR) are needed");
		return CODE(INVALID_ARGUMENT);
	}
	if (c->ca == NULL && !c->insecure) {
		snprintf(err, errcap, "--ca FILE (or TALLY_CA), the cluster's CA certificate, is "
				      "needed; --insecure (or TALLY_INSECURE=1) for a plaintext cluster");
		return CODE(INVALID_ARGUMENT);
	}
	if (c->ca == NULL)
		fprintf(stderr, "%s: warning: --insecure: plaintext, the node is not verified\n", tool);
	struct tally_key k;
	/* A key file names its key; a key directory needs the name. */
	const char *name = c->key != NULL || c->key_file != NULL ? c->key : default_key;
	if (tally_keys_load_client(c->key_file, c->key_file != NULL ? NULL : c->key_dir, name, &k,
				   err, errcap) != 0)
		return CODE(INVALID_ARGUMENT);
	o.cluster = c->cluster;
	o.key_name = k.name;
	o.secret = k.secret;
	o.ca_file = c->ca;
	Tally__V1__ResultCode rc = tally_client_open(out, &o, err, errcap);
	OPENSSL_cleanse(&k, sizeof(k));
	return rc;
}
