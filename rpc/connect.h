/*
 * rpc/connect — how a command-line tool finds its cluster, key and CA: flags, else
 * the environment that tally-cluster writes (TALLY_CLUSTER, TALLY_KEY_FILE,
 * TALLY_KEY_DIR, TALLY_CA, TALLY_INSECURE=1). One place for tallyctl, tally-bench and
 * tally-audit.
 *
 *   --cluster A,B     the nodes' client addresses
 *   --key-file F      a client key file of one key (0600), or
 *   --key-dir D       a directory of them, D/NAME.key, with --key NAME
 *   --ca FILE         the cluster's CA certificate: TLS, every node verified, or
 *   --insecure        plaintext, for a cluster started with --insecure
 */
#ifndef TALLY_RPC_CONNECT_H
#define TALLY_RPC_CONNECT_H

#include <stdbool.h>
#include <stddef.h>

#include "rpc/tally.h"

struct tally_connect {
	const char *cluster, *key_file, *key_dir, *key, *ca;
	bool insecure;
};

/* The environment's defaults. */
void tally_connect_from_env(struct tally_connect *c);

/* If argv[i] is one of the flags above, takes it (and its value): returns how many
 * items it used (1 or 2); 0 when argv[i] is not one of them; -1 when its value is
 * missing. */
int tally_connect_flag(struct tally_connect *c, int argc, char **argv, int i);

/* Checks that everything needed is there, loads the key (`default_key` when a key
 * directory is given without --key) and opens a client with `o`'s other options.
 * Returns OK, INVALID_ARGUMENT (usage: err says what is missing), UNAUTHENTICATED
 * (the key was refused) or UNAVAILABLE (no node answered); nothing was sent. With
 * --insecure, warns on stderr as `tool`. */
Tally__V1__ResultCode tally_connect_open(const struct tally_connect *c, const char *tool,
					 const char *default_key, struct tally_client_options o,
					 struct tally_client **out, char *err, size_t errcap);

#endif
