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

/* Flags that take a value: where it goes. */
static const char **value_slot(struct audit_opts *o, const char *flag)
{
	static const struct {
		const char *flag;
		size_t at;
	} slots[] = {
		{"--out", offsetof(struct audit_opts, out)},
		{"--keys", offsetof(struct audit_opts, keys)},
		{"--brand", offsetof(struct audit_opts, brand)},
		{"--member", offsetof(struct audit_opts, member)},
		{"--at", offsetof(struct audit_opts, at)},
		{"--checkpoint", offsetof(struct audit_opts, checkpoint)},
		{"--png", offsetof(struct audit_opts, png)},
	};
	for (size_t k = 0; k < sizeof(slots) / sizeof(slots[0]); k++)
		if (strcmp(flag, slots[k].flag) == 0)
			return (const char **)((char *)o + slots[k].at);
	return NULL;
}

/* The layering thresholds, in days. */
static int64_t *days_slot(struct audit_opts *o, const char *flag)
{
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
	for (size_t k = 0; k < sizeof(days) / sizeof(days[0]); k++)
		if (strcmp(flag, days[k].flag) == 0)
			return (int64_t *)((char *)o + days[k].at);
	return NULL;
}

/* One flag (and its value) at argv[*i]: 0, or the usage exit. */
static int parse_flag(struct audit_opts *o, int argc, char **argv, int *i)
{
	const char *a = argv[*i];
	int took = tally_connect_flag(&o->conn, argc, argv, *i);
	const char **value = value_slot(o, a);
	int64_t *days = days_slot(o, a);
	bool has_value = *i + 1 < argc;
	if (took > 0)
		*i += took - 1;
	else if ((value != NULL || days != NULL) && !has_value)
		return usage("a flag without its value");
	else if (value != NULL)
		*value = argv[++*i];
	else if (days != NULL) {
		*days = strtoll(argv[++*i], NULL, 10);
		if (*days <= 0 || *days > 36500)
			return usage("a number of days is 1..36500");
	} else if (strcmp(a, "--settlement") == 0 && has_value)
		o->settlement = strtoull(argv[++*i], NULL, 10);
	else if (strcmp(a, "--json") == 0 || strcmp(a, "--stale") == 0 || strcmp(a, "--csv") == 0)
		*(a[2] == 'j' ? &o->json : a[2] == 's' ? &o->stale : &o->csv) = true;
	else if (a[0] != '-' && o->dir == NULL)
		o->dir = a;
	else
		return usage("unknown flag or a flag without its value");
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)
		return usage(NULL);
	struct audit_opts o = {.new_days = 90, .mature_days = 365, .lapse_days = 180,
			       .active_days = 30, .occasional_days = 90};
	tally_connect_from_env(&o.conn);
	const char *cmd = argv[1];
	for (int i = 2; i < argc; i++)
		if (parse_flag(&o, argc, argv, &i) != 0)
			return AUDIT_EXIT_USAGE;
	if (strcmp(cmd, "pull") == 0 && o.dir == NULL)
		o.dir = o.out;
	if (o.dir == NULL)
		return usage("a directory is needed");
	static const struct {
		const char *name;
		int (*run)(const struct audit_opts *o);
	} commands[] = {
		{"pull", audit_pull},         {"verify", audit_verify},
		{"replay", audit_replay},     {"balance", audit_balance},
		{"statement", audit_statement}, {"check-statement", audit_check_statement},
		{"layering", audit_layering},
	};
	if (strcmp(cmd, "layering") == 0 &&
	    (o.new_days >= o.mature_days || o.active_days >= o.occasional_days))
		return usage("--new-days must be below --mature-days, --active-days below "
			     "--occasional-days");
	for (size_t k = 0; k < sizeof(commands) / sizeof(commands[0]); k++)
		if (strcmp(cmd, commands[k].name) == 0)
			return commands[k].run(&o);
	return usage("unknown command");
}
