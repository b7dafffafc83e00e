/*
 * tally-audit — take the journal home and prove it (README "Auditing").
 *
 *   tally-audit pull --out DIR [--cluster A,B] [--key-dir D [--key NAME] | --key-file F]
 *                    [--ca FILE | --insecure] [--stale] [--json]
 *   tally-audit verify DIR --keys FILE [--json]
 *   tally-audit replay DIR --out LEDGERDIR [--json]
 *   tally-audit balance DIR --brand B --member M [--at SEQ|TIME] [--json]
 *   tally-audit statement DIR --settlement ID [--json | --csv]
 *   tally-audit check-statement FILE --checkpoint C.json --keys FILE [--json]
 *   tally-audit layering DIR --brand B [--at TIME] [--json | --csv] [--png FILE] [--new-days 90]
 *               [--mature-days 365] [--lapse-days 180] [--active-days 30]
 *               [--occasional-days 90]
 *
 * The key of pull is an auditor's (scope *; "auditor" in a key directory by default).
 * --stale reads from the first node of --cluster without a barrier (through a
 * follower, even a lagging one: its checkpoint and its entries agree).
 * Exit codes: 0 done (verify: everything proved), 1 a problem found or a definite
 * refusal (named on stderr), 2 usage, 3 the cluster did not answer.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tools/audit/audit.h"

static int usage(const char *why)
{
	if (why != NULL)
		fprintf(stderr, "tally-audit: %s\n", why);
	fprintf(stderr,
		"usage: tally-audit pull --out DIR [--cluster A,B] [--key-dir D [--key NAME] | --key-file F]\n"
		"                        [--ca FILE | --insecure] [--stale] [--json]\n"
		"       tally-audit verify DIR --keys FILE [--json]\n"
		"       tally-audit replay DIR --out LEDGERDIR [--json]\n"
		"       tally-audit balance DIR --brand B --member M [--at SEQ|TIME] [--json]\n"
		"       tally-audit statement DIR --settlement ID [--json | --csv]\n"
		"       tally-audit check-statement FILE --checkpoint C.json --keys FILE [--json]\n"
		"       tally-audit layering DIR --brand B [--at TIME] [--json | --csv] [--png FILE]\n"
		"                  [--new-days 90] [--mature-days 365] [--lapse-days 180]\n"
		"                  [--active-days 30] [--occasional-days 90]\n"
		"exit: 0 done, 1 a problem found (named), 2 usage, 3 the cluster did not answer\n");
	return AUDIT_EXIT_USAGE;
}

int main(int argc, char **argv)
{
	if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)
		return usage(NULL);
	struct audit_opts o = {.new_days = 90, .mature_days = 365, .lapse_days = 180,
			       .active_days = 30, .occasional_days = 90};
	static const struct {
		const char *flag;
		size_t at;
	} days[] = {
		{"--new-days", offsetof(struct audit_opts, new_days)},
		{"--mature-days", offsetof(struct audit_opts, mature_days)},
		{"--lapse-days", offsetof(struct audit_opts, lapse_days)},
		{"--active-days", offsetof(struct audit_opts, active_days)},
		{"--occasional-days", offsetof(struct audit_opts, occasional_days)},
	};
	tally_connect_from_env(&o.conn);
	const char *cmd = argv[1];
	for (int i = 2; i < argc; i++) {
		int took = tally_connect_flag(&o.conn, argc, argv, i);
		if (took > 0) {
			i += took - 1;
			continue;
		}
		size_t d = 0;
		while (d < sizeof(days) / sizeof(days[0]) && strcmp(argv[i], days[d].flag) != 0)
			d++;
		if (d < sizeof(days) / sizeof(days[0]) && i + 1 < argc) {
			int64_t v = strtoll(argv[++i], NULL, 10);
			if (v <= 0 || v > 36500)
				return usage("a number of days is 1..36500");
			*(int64_t *)((char *)&o + days[d].at) = v;
		} else if (strcmp(argv[i], "--json") == 0)
			o.json = true;
		else if (strcmp(argv[i], "--stale") == 0)
			o.stale = true;
		else if (strcmp(argv[i], "--out") == 0 && i + 1 < argc)
			o.out = argv[++i];
		else if (strcmp(argv[i], "--keys") == 0 && i + 1 < argc)
			o.keys = argv[++i];
		else if (strcmp(argv[i], "--brand") == 0 && i + 1 < argc)
			o.brand = argv[++i];
		else if (strcmp(argv[i], "--member") == 0 && i + 1 < argc)
			o.member = argv[++i];
		else if (strcmp(argv[i], "--at") == 0 && i + 1 < argc)
			o.at = argv[++i];
		else if (strcmp(argv[i], "--settlement") == 0 && i + 1 < argc)
			o.settlement = strtoull(argv[++i], NULL, 10);
		else if (strcmp(argv[i], "--checkpoint") == 0 && i + 1 < argc)
			o.checkpoint = argv[++i];
		else if (strcmp(argv[i], "--csv") == 0)
			o.csv = true;
		else if (strcmp(argv[i], "--png") == 0 && i + 1 < argc)
			o.png = argv[++i];
		else if (argv[i][0] != '-' && o.dir == NULL)
			o.dir = argv[i];
		else
			return usage("unknown flag or a flag without its value");
	}
	if (strcmp(cmd, "pull") == 0 && o.dir == NULL)
		o.dir = o.out;
	if (o.dir == NULL)
		return usage("a directory is needed");
	if (strcmp(cmd, "pull") == 0)
		return audit_pull(&o);
	if (strcmp(cmd, "replay") == 0)
		return audit_replay(&o);
	if (strcmp(cmd, "verify") == 0)
		return audit_verify(&o);
	if (strcmp(cmd, "balance") == 0)
		return audit_balance(&o);
	if (strcmp(cmd, "statement") == 0)
		return audit_statement(&o);
	if (strcmp(cmd, "check-statement") == 0)
		return audit_check_statement(&o);
	if (strcmp(cmd, "layering") == 0) {
		if (o.new_days >= o.mature_days || o.active_days >= o.occasional_days)
			return usage("--new-days must be below --mature-days, --active-days below "
				     "--occasional-days");
		return audit_layering(&o);
	}
	return usage("unknown command");
}
