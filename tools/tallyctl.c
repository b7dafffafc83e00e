/*
 * tallyctl — the command line of a Tally cluster, a contract scripts rely on.
 *
 *   tallyctl [--cluster ADDR,...] [--key-dir D [--key NAME] | --key-file F] [--ca FILE | --insecure]
 *            [--timeout-ms N] [--json] COMMAND [SUBCOMMAND] [--flag value ...]
 *
 * --cluster defaults to $TALLY_CLUSTER. The key: --key-file F ($TALLY_KEY_FILE), a
 * client key file holding one key line (mode 0600), or --key-dir D ($TALLY_KEY_DIR)
 * with one such file per key, D/NAME.key, and --key NAME (default admin); the server's
 * keys file, every secret in it, is refused. --ca defaults to
 * $TALLY_CA (the cluster's CA certificate: the connection is TLS and the node must
 * prove it is a member); --insecure (or TALLY_INSECURE=1) talks plaintext to a
 * cluster started with --insecure.
 * Exit codes (the same in the usage text and README.md):
 *   0  done (also an idempotent replay)
 *   1  a definite rejection (the ledger's or the node's: a code and a message; in
 *      --json an {"error":...} object), or the key was refused
 *   2  usage error (also a request the node refused as malformed)
 *   3  not applied: the cluster was unavailable or failed before acting on it; for a
 *      read (queries, status), no answer — a read changes nothing
 *   4  unknown outcome of a command or cluster change: the request was sent and no
 *      definite answer came (timed out, connection lost, an answer that is not one);
 *      the message names the request id: retry with the same --request-id
 * Exit 4 is libtally's TIMEOUT for a call with an effect, and nothing else is 4.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include <openssl/crypto.h>

#include "rpc/connect.h"
#include "rpc/json.h"
#include "rpc/keys.h"
#include "rpc/tally.h"
#include "rpc/units.h"
#include "tools/ctl/import.h"

#define CODE(name) TALLY__V1__RESULT_CODE__##name
#define FLAGS_MAX 16

enum { EXIT_DONE = 0, EXIT_REJECTED = 1, EXIT_USAGE = 2, EXIT_UNAVAILABLE = 3, EXIT_UNKNOWN = 4 };

struct ctl {
	struct tally_connect conn;     /* cluster, key, CA (rpc/connect.h) */
	unsigned timeout_ms;
	bool json;
	const char *words[2];          /* command and subcommand */
	size_t n_words;
	const char *names[FLAGS_MAX];  /* --name value pairs after the command */
	const char *values[FLAGS_MAX];
	size_t n_flags;
	struct tally_client *client;
	struct tally_arena arena;
	char request_id[40];
	bool help;                     /* --help anywhere: print help, send nothing */
};

/* ---- output ------------------------------------------------------------------------- */

static void hex(const ProtobufCBinaryData *b)
{
	for (size_t i = 0; i < b->len; i++)
		printf("%02x", b->data[i]);
}

static int usage(const char *why);

/* ---- flags -------------------------------------------------------------------------- */

static const char *flag(const struct ctl *c, const char *name)
{
	for (size_t i = 0; i < c->n_flags; i++)
		if (strcmp(c->names[i], name) == 0)
			return c->values[i];
	return NULL;
}

static bool has(const struct ctl *c, const char *name)
{
	return flag(c, name) != NULL;
}

/* A required string flag; exits with a usage error when missing. */
static char *need(const struct ctl *c, const char *name)
{
	const char *v = flag(c, name);
	if (v == NULL) {
		fprintf(stderr, "tallyctl: --%s is required\n", name);
		exit(EXIT_USAGE);
	}
	return (char *)v;
}

static int64_t num(const struct ctl *c, const char *name, int64_t dflt, bool required)
{
	const char *v = required ? need(c, name) : flag(c, name);
	if (v == NULL)
		return dflt;
	char *end;
	long long x = strtoll(v, &end, 10);
	if (*v == '\0' || *end != '\0') {
		fprintf(stderr, "tallyctl: --%s: not a number: %s\n", name, v);
		exit(EXIT_USAGE);
	}
	return x;
}

/* A required time flag: RFC 3339 ("2026-12-01T00:00:00Z") or UNIX ms. */
static int64_t when(const struct ctl *c, const char *name)
{
	const char *v = need(c, name);
	int64_t ms;
	char err[160];
	if (!tally_time_parse(v, &ms, err, sizeof(err))) {
		fprintf(stderr, "tallyctl: --%s: %s\n", name, err);
		exit(EXIT_USAGE);
	}
	return ms;
}

/* Splits "a,b,c" in place into at most max parts. */
static size_t split(char *s, char **parts, size_t max)
{
	size_t n = 0;
	char *save = NULL;
	for (char *t = strtok_r(s, ",", &save); t != NULL && n < max; t = strtok_r(NULL, ",", &save))
		parts[n++] = t;
	return n;
}

static char *dup(struct ctl *c, const char *s)
{
	return tally_arena_strdup(&c->arena, s);
}

static void *zalloc(struct ctl *c, size_t n)
{
	void *p = tally_arena_zalloc(&c->arena, n);
	if (p == NULL) {
		fprintf(stderr, "tallyctl: out of memory\n");
		exit(EXIT_UNAVAILABLE);
	}
	return p;
}

/* ---- results ------------------------------------------------------------------------ */

static int print_rejection(const struct ctl *c, Tally__V1__ResultCode code, const char *msg);

/* The exit for a call that did not return OK (rpc/tally.h): `effect` for commands and
 * cluster changes, which alone can have an unknown outcome. */
static int transport_exit(const struct ctl *c, Tally__V1__ResultCode rc, const char *what,
			  bool effect)
{
	const char *why = tally_client_error(c->client);
	if (rc == CODE(TIMEOUT) && effect) {
		if (c->request_id[0] != '\0')
			fprintf(stderr, "tallyctl: %s: outcome unknown (%s); retry with the same "
					"--request-id %s\n", what, why, c->request_id);
		else
			fprintf(stderr, "tallyctl: %s: outcome unknown (%s); it may still take "
					"effect: see status, or retry\n", what, why);
		return EXIT_UNKNOWN;
	}
	if (rc == CODE(TIMEOUT) || rc == CODE(UNAVAILABLE) || rc == CODE(INTERNAL)) {
		fprintf(stderr, "tallyctl: %s: %s: %s (%s)\n", what, tally_result_name(rc),
			effect ? "not applied" : "no answer", why);
		return EXIT_UNAVAILABLE;
	}
	if (rc == CODE(INVALID_ARGUMENT)) {
		fprintf(stderr, "tallyctl: %s: %s (%s)\n", what, tally_result_name(rc), why);
		return EXIT_USAGE;
	}
	return print_rejection(c, rc, why); /* refused whole by the node: definite */
}

static int print_rejection(const struct ctl *c, Tally__V1__ResultCode code, const char *msg)
{
	if (c->json) {
		printf("{\"error\":");
		tally_json_write_str(stdout, tally_result_name(code));
		printf(",\"message\":");
		tally_json_write_str(stdout, msg != NULL ? msg : "");
		printf("}\n");
	} else {
		printf("%s: %s\n", tally_result_name(code), msg != NULL ? msg : "");
	}
	return EXIT_REJECTED;
}

static int print_result(const struct ctl *c, const Tally__V1__CommandResult *r)
{
	if (r->code != CODE(OK))
		return print_rejection(c, r->code, r->message);
	if (c->json) {
		printf("{\"request_id\":");
		tally_json_write_str(stdout, c->request_id);
		printf(",\"entry_seq\":%" PRIu64 ",\"points\":%" PRId64 ",\"available\":%" PRId64
		       ",\"held\":%" PRId64, r->entry_seq, r->points, r->available, r->held);
		if (r->hold_id != 0)
			printf(",\"hold_id\":%" PRIu64, r->hold_id);
		if (r->settlement_id != 0)
			printf(",\"settlement_id\":%" PRIu64, r->settlement_id);
		if (r->count != 0 || r->more)
			printf(",\"count\":%" PRId64 ",\"more\":%s", r->count, r->more ? "true" : "false");
		if (r->replay)
			printf(",\"replay\":true");
		printf("}\n");
		return EXIT_DONE;
	}
	printf("ok%s: entry %" PRIu64 ", request %s", r->replay ? " (replay)" : "", r->entry_seq,
	       c->request_id);
	if (r->hold_id != 0)
		printf(", hold %" PRIu64, r->hold_id);
	if (r->settlement_id != 0)
		printf(", settlement %" PRIu64, r->settlement_id);
	if (r->points != 0)
		printf(", points %" PRId64, r->points);
	printf(", available %" PRId64 ", held %" PRId64 "\n", r->available, r->held);
	return EXIT_DONE;
}

/* ---- mutating commands -------------------------------------------------------------- */

/* A fresh request id: UUIDv7's layout (RFC 9562), the time in milliseconds in the
 * first six bytes and 74 random bits after. The ledger files each (key, request id) it
 * applies in a B-tree; ids that rise with time land together at its end, where random
 * ones would each land on a page of their own (README, Idempotency). */
static void request_id_new(uint8_t r[16])
{
	struct timespec ts;
	if (getrandom(r, 16, 0) != 16 || clock_gettime(CLOCK_REALTIME, &ts) != 0)
		exit(EXIT_UNAVAILABLE);
	uint64_t ms = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
	for (int i = 0; i < 6; i++)
		r[i] = (uint8_t)(ms >> (40 - 8 * i));
	r[6] = (uint8_t)(0x70 | (r[6] & 0x0f)); /* version 7 */
	r[8] = (uint8_t)(0x80 | (r[8] & 0x3f)); /* the RFC's variant */
}

static Tally__V1__Command *command(struct ctl *c)
{
	Tally__V1__Command *cmd = zalloc(c, sizeof(*cmd));
	tally__v1__command__init(cmd);
	const char *rid = flag(c, "request-id");
	if (rid != NULL) {
		snprintf(c->request_id, sizeof(c->request_id), "%s", rid);
	} else {
		uint8_t r[16];
		request_id_new(r);
		for (int i = 0; i < 16; i++)
			snprintf(c->request_id + 2 * i, 3, "%02x", r[i]);
		if (!c->json)
			fprintf(stderr, "request-id %s\n", c->request_id);
	}
	cmd->request_id = c->request_id;
	return cmd;
}

static int run_command(struct ctl *c, Tally__V1__Command *cmd)
{
	Tally__V1__CommandResult *r;
	Tally__V1__ResultCode rc = tally_client_command(c->client, cmd, &c->arena, &r);
	if (rc != CODE(OK))
		return transport_exit(c, rc, "command", true);
	return print_result(c, r);
}

#define BODY(cmd, field, type, init, CASE)                              \
	type *m = zalloc(c, sizeof(type));                              \
	init(m);                                                        \
	(cmd)->body_case = TALLY__V1__COMMAND__BODY_##CASE;             \
	(cmd)->field = m

static Tally__V1__Tier **parse_tiers(struct ctl *c, const char *spec, size_t *n)
{
	char *copy = dup(c, spec), *parts[TALLY_TIERS_MAX + 1];
	*n = split(copy, parts, TALLY_TIERS_MAX + 1);
	Tally__V1__Tier **tiers = zalloc(c, (*n + 1) * sizeof(*tiers));
	for (size_t i = 0; i < *n; i++) {
		char *colon = strchr(parts[i], ':');
		if (colon == NULL)
			exit(usage("--tiers: NAME:POINTS,..."));
		*colon = '\0';
		tiers[i] = zalloc(c, sizeof(**tiers));
		tally__v1__tier__init(tiers[i]);
		tiers[i]->name = parts[i];
		tiers[i]->min_points = strtoll(colon + 1, NULL, 10);
	}
	return tiers;
}

static int cmd_brand(struct ctl *c)
{
	Tally__V1__Command *cmd = command(c);
	if (c->n_words == 2 && strcmp(c->words[1], "create") == 0) {
		BODY(cmd, register_brand, Tally__V1__RegisterBrand, tally__v1__register_brand__init,
		     REGISTER_BRAND);
		m->id = need(c, "id");
		m->name = has(c, "name") ? need(c, "name") : m->id;
		m->point_value_micros = num(c, "point-value-micros", 10000, false);
		m->currency = has(c, "currency") ? need(c, "currency") : (char *)"EUR";
		m->expiry_months = (uint32_t)num(c, "expiry-months", 0, false);
		if (has(c, "tiers"))
			m->tiers = parse_tiers(c, need(c, "tiers"), &m->n_tiers);
		m->tier_window_days = (uint32_t)num(c, "tier-window-days", m->n_tiers ? 365 : 0, false);
		m->transfer_max_points = num(c, "transfer-max", 0, false);
		m->transfer_daily_cap_points = num(c, "transfer-daily-cap", 0, false);
		m->community_daily_cap_points = num(c, "community-daily-cap", 0, false);
		return run_command(c, cmd);
	}
	if (c->n_words == 2 && strcmp(c->words[1], "update") == 0) {
		BODY(cmd, update_brand, Tally__V1__UpdateBrand, tally__v1__update_brand__init,
		     UPDATE_BRAND);
		m->id = need(c, "id");
		if (has(c, "name")) {
			m->name = zalloc(c, sizeof(*m->name));
			tally__v1__string_value__init(m->name);
			m->name->value = need(c, "name");
		}
		if (has(c, "expiry-months")) {
			m->expiry_months = zalloc(c, sizeof(*m->expiry_months));
			tally__v1__uint32_value__init(m->expiry_months);
			m->expiry_months->value = (uint32_t)num(c, "expiry-months", 0, true);
		}
		if (has(c, "tiers")) {
			m->replace_tiers = true;
			m->tiers = parse_tiers(c, need(c, "tiers"), &m->n_tiers);
		}
		if (has(c, "tier-window-days")) {
			m->tier_window_days = zalloc(c, sizeof(*m->tier_window_days));
			tally__v1__uint32_value__init(m->tier_window_days);
			m->tier_window_days->value = (uint32_t)num(c, "tier-window-days", 0, true);
		}
		return run_command(c, cmd);
	}
	return usage("brand create|update");
}

static Tally__V1__Segment segment(const char *s)
{
	Tally__V1__Segment seg = ctl_segment_named(s);
	if (seg == TALLY__V1__SEGMENT__SEGMENT_UNSPECIFIED) {
		fprintf(stderr, "tallyctl: unknown segment %s\n", s);
		exit(EXIT_USAGE);
	}
	return seg;
}

static int cmd_member(struct ctl *c)
{
	Tally__V1__Command *cmd = command(c);
	Tally__V1__Segment seg = segment(has(c, "segment") ? need(c, "segment") : "fan");
	if (c->n_words == 2 && strcmp(c->words[1], "open") == 0) {
		BODY(cmd, open_member, Tally__V1__OpenMember, tally__v1__open_member__init, OPEN_MEMBER);
		m->id = need(c, "id");
		m->segment = seg;
		return run_command(c, cmd);
	}
	if (c->n_words == 2 && strcmp(c->words[1], "update") == 0) {
		BODY(cmd, update_member, Tally__V1__UpdateMember, tally__v1__update_member__init,
		     UPDATE_MEMBER);
		m->id = need(c, "id");
		m->segment = seg;
		return run_command(c, cmd);
	}
	return usage("member open|update");
}

static char *opt_str(const struct ctl *c, const char *name)
{
	const char *v = flag(c, name);
	return (char *)(v != NULL ? v : "");
}

static int cmd_points(struct ctl *c)
{
	Tally__V1__Command *cmd = command(c);
	const char *w = c->words[0];
	if (strcmp(w, "accrue") == 0) {
		BODY(cmd, accrue, Tally__V1__Accrue, tally__v1__accrue__init, ACCRUE);
		m->brand = need(c, "brand");
		m->member = need(c, "member");
		m->points = num(c, "points", 0, true);
		m->reason = opt_str(c, "reason");
		m->reference = opt_str(c, "reference");
	} else if (strcmp(w, "redeem") == 0) {
		BODY(cmd, redeem, Tally__V1__Redeem, tally__v1__redeem__init, REDEEM);
		m->brand = need(c, "brand");
		m->member = need(c, "member");
		m->points = num(c, "points", 0, true);
		m->reason = opt_str(c, "reason");
		m->reference = opt_str(c, "reference");
	} else if (strcmp(w, "hold") == 0) {
		BODY(cmd, hold, Tally__V1__Hold, tally__v1__hold__init, HOLD);
		m->brand = need(c, "brand");
		m->member = need(c, "member");
		m->points = num(c, "points", 0, true);
		m->timeout_s = (uint32_t)num(c, "timeout-s", 0, false);
		m->reference = opt_str(c, "reference");
	} else if (strcmp(w, "capture") == 0) {
		BODY(cmd, capture, Tally__V1__Capture, tally__v1__capture__init, CAPTURE);
		m->hold_id = (uint64_t)num(c, "hold", 0, true);
		m->points = num(c, "points", 0, false);
	} else if (strcmp(w, "void") == 0) {
		BODY(cmd, void_, Tally__V1__Void, tally__v1__void__init, VOID);
		m->hold_id = (uint64_t)num(c, "hold", 0, true);
	} else if (strcmp(w, "reverse") == 0) {
		BODY(cmd, reverse, Tally__V1__Reverse, tally__v1__reverse__init, REVERSE);
		m->entry_seq = (uint64_t)num(c, "entry", 0, true);
		m->points = num(c, "points", 0, false);
		m->reason = opt_str(c, "reason");
	} else if (strcmp(w, "transfer") == 0) {
		BODY(cmd, transfer, Tally__V1__Transfer, tally__v1__transfer__init, TRANSFER);
		m->brand = need(c, "brand");
		m->from_member = need(c, "from");
		m->to_member = need(c, "to");
		m->points = num(c, "points", 0, true);
		m->reason = opt_str(c, "reason");
	} else if (strcmp(w, "adjust") == 0) {
		BODY(cmd, adjust, Tally__V1__Adjust, tally__v1__adjust__init, ADJUST);
		m->brand = need(c, "brand");
		m->member = need(c, "member");
		m->points = num(c, "points", 0, true);
		m->reason = need(c, "reason");
	} else if (strcmp(w, "expire") == 0) {
		BODY(cmd, expire, Tally__V1__Expire, tally__v1__expire__init, EXPIRE);
	} else {
		return usage(NULL);
	}
	return run_command(c, cmd);
}

static int cmd_partners(struct ctl *c)
{
	Tally__V1__Command *cmd = command(c);
	const char *w = c->words[0];
	if (strcmp(w, "agreement") == 0 && c->n_words == 2 && strcmp(c->words[1], "set") == 0) {
		BODY(cmd, set_agreement, Tally__V1__SetAgreement, tally__v1__set_agreement__init,
		     SET_AGREEMENT);
		m->from_brand = need(c, "from");
		m->to_brand = need(c, "to");
		long long num_, den;
		if (sscanf(need(c, "rate"), "%lld/%lld", &num_, &den) != 2)
			return usage("--rate NUM/DEN");
		m->rate_num = num_;
		m->rate_den = den;
		m->min_points = num(c, "min", 0, false);
		m->max_points = num(c, "max", 0, false);
		m->daily_cap_points = num(c, "daily-cap", 0, false);
		m->price_micros = num(c, "price-micros", 0, false);
		m->active = true;
	} else if (strcmp(w, "exchange") == 0) {
		BODY(cmd, exchange, Tally__V1__Exchange, tally__v1__exchange__init, EXCHANGE);
		m->from_brand = need(c, "from");
		m->to_brand = need(c, "to");
		m->member = need(c, "member");
		m->points = num(c, "points", 0, true);
	} else if (strcmp(w, "settle") == 0) {
		BODY(cmd, settle, Tally__V1__Settle, tally__v1__settle__init, SETTLE);
		char *pair[2];
		if (split(dup(c, need(c, "brands")), pair, 2) != 2)
			return usage("--brands A,B");
		m->brand_a = pair[0];
		m->brand_b = pair[1];
		m->until_ms = when(c, "until");
	} else if (strcmp(w, "settlement") == 0 && c->n_words == 2 &&
		   strcmp(c->words[1], "confirm") == 0) {
		BODY(cmd, confirm_settlement, Tally__V1__ConfirmSettlement,
		     tally__v1__confirm_settlement__init, CONFIRM_SETTLEMENT);
		m->settlement_id = (uint64_t)num(c, "id", 0, true);
	} else {
		return usage(NULL);
	}
	return run_command(c, cmd);
}

/* ---- queries ------------------------------------------------------------------------ */

static int run_query(struct ctl *c, Tally__V1__Query *q, Tally__V1__QueryResult **res)
{
	q->stale = has(c, "stale");
	Tally__V1__ResultCode rc = tally_client_query(c->client, q, &c->arena, res);
	if (rc != CODE(OK))
		return transport_exit(c, rc, "query", false);
	if ((*res)->code != CODE(OK))
		return print_rejection(c, (*res)->code, (*res)->message);
	return EXIT_DONE;
}

/* What a brand's points are worth: its currency ("" when unknown) and micros per point. */
struct worth {
	char currency[4];
	int64_t point_micros;
};

/* The brand's worth (a GetBrand query, stale as the command's own). Quietly unknown
 * when the brand cannot be read: the output then goes without money. */
static struct worth brand_worth(struct ctl *c, const char *brand)
{
	struct worth w = {"", 0};
	Tally__V1__Query q = TALLY__V1__QUERY__INIT;
	Tally__V1__GetBrand g = TALLY__V1__GET_BRAND__INIT;
	g.id = (char *)brand;
	q.q_case = TALLY__V1__QUERY__Q_BRAND;
	q.brand = &g;
	q.stale = has(c, "stale");
	Tally__V1__QueryResult *res;
	if (tally_client_query(c->client, &q, &c->arena, &res) == CODE(OK) &&
	    res->code == CODE(OK) && res->brand != NULL) {
		snprintf(w.currency, sizeof(w.currency), "%s", res->brand->currency);
		w.point_micros = res->brand->point_value_micros;
	}
	return w;
}

/* points x the brand's point value, as money ("18.00 EUR"); "" when not known or when
 * the product does not fit in 64 bits. */
static const char *points_worth(const struct worth *w, int64_t points, char out[TALLY_MONEY_BYTES])
{
	int64_t micros;
	if (w->currency[0] == '\0' || __builtin_mul_overflow(points, w->point_micros, &micros)) {
		out[0] = '\0';
		return out;
	}
	return tally_money_format(micros, w->currency, out);
}

static void print_account(const struct ctl *c, const Tally__V1__Account *a,
			  const struct worth *w, bool last)
{
	char value[TALLY_MONEY_BYTES];
	points_worth(w, a->available, value);
	if (c->json) {
		printf("{\"brand\":");
		tally_json_write_str(stdout, a->brand);
		printf(",\"member\":");
		tally_json_write_str(stdout, a->member);
		printf(",\"available\":%" PRId64 ",\"held\":%" PRId64 ",\"earned\":%" PRId64
		       ",\"redeemed\":%" PRId64 ",\"expired\":%" PRId64 ",\"tier\":",
		       a->available, a->held, a->earned, a->redeemed, a->expired);
		tally_json_write_str(stdout, a->tier);
		if (value[0] != '\0') {
			printf(",\"available_value\":");
			tally_json_write_str(stdout, value);
		}
		printf("}%s", last ? "" : ",");
		return;
	}
	printf("%s/%s available %" PRId64 "%s%s%s held %" PRId64 " earned %" PRId64
	       " redeemed %" PRId64 " expired %" PRId64 " tier %s\n", a->brand, a->member,
	       a->available, value[0] ? " (" : "", value, value[0] ? ")" : "", a->held, a->earned,
	       a->redeemed, a->expired, a->tier[0] ? a->tier : "-");
}

static int cmd_balances(struct ctl *c)
{
	Tally__V1__Query q = TALLY__V1__QUERY__INIT;
	Tally__V1__GetAccounts g = TALLY__V1__GET_ACCOUNTS__INIT;
	char *members[TALLY_ACCOUNTS_QUERY_MAX];
	bool one = strcmp(c->words[0], "balance") == 0;
	g.brand = need(c, "brand");
	if (one) {
		members[0] = need(c, "member");
		g.n_members = 1;
	} else {
		g.n_members = split(dup(c, need(c, "members")), members, TALLY_ACCOUNTS_QUERY_MAX);
	}
	g.members = members;
	q.q_case = TALLY__V1__QUERY__Q_ACCOUNTS;
	q.accounts = &g;
	Tally__V1__QueryResult *res;
	int rc = run_query(c, &q, &res);
	if (rc != EXIT_DONE)
		return rc;
	struct worth w = brand_worth(c, g.brand);
	if (c->json && !one)
		printf("{\"applied_index\":%" PRIu64 ",\"accounts\":[", res->applied_index);
	for (size_t i = 0; i < res->n_accounts; i++)
		print_account(c, res->accounts[i], &w, i + 1 == res->n_accounts);
	if (c->json)
		printf("%s\n", one ? "" : "]}");
	if (!c->json && q.stale)
		printf("(stale read at applied index %" PRIu64 ")\n", res->applied_index);
	return EXIT_DONE;
}

static int cmd_digest(struct ctl *c)
{
	Tally__V1__Query q = TALLY__V1__QUERY__INIT;
	Tally__V1__GetDigest g = TALLY__V1__GET_DIGEST__INIT;
	q.q_case = TALLY__V1__QUERY__Q_DIGEST;
	q.digest = &g;
	Tally__V1__QueryResult *res;
	int rc = run_query(c, &q, &res);
	if (rc != EXIT_DONE)
		return rc;
	const Tally__V1__Digest *d = res->digest;
	printf(c->json ? "{\"applied_index\":%" PRIu64 ",\"tree_size\":%" PRIu64 ",\"root\":\""
		       : "applied_index %" PRIu64 " tree_size %" PRIu64 " root ",
	       d->applied_index, d->tree_size);
	hex(&d->root);
	printf(c->json ? "\",\"state_digest\":\"" : " state_digest ");
	hex(&d->state_digest);
	char t[TALLY_TIME_BYTES];
	tally_time_format(d->time_ms, t);
	if (c->json)
		printf("\",\"time_ms\":%" PRId64 ",\"time\":\"%s\"}\n", d->time_ms, t);
	else
		printf(" time %s\n", t);
	return EXIT_DONE;
}

static void print_entry(const struct ctl *c, const Tally__V1__StoredEntry *se, bool last)
{
	Tally__V1__Entry *e = tally__v1__entry__unpack(tally_arena_protobuf((struct tally_arena *)&c->arena),
						       se->entry.len, se->entry.data);
	if (e == NULL)
		return;
	const char *what = "?";
	if (e->kind == TALLY__V1__ENTRY_KIND__LOT_EXPIRED)
		what = "lot_expired";
	else if (e->kind == TALLY__V1__ENTRY_KIND__HOLD_RELEASED)
		what = "hold_released";
	else if (e->command != NULL) {
		const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field(
			&tally__v1__command__descriptor, (unsigned)e->command->body_case);
		what = f != NULL ? f->name : "?";
	}
	char t[TALLY_TIME_BYTES];
	tally_time_format(e->time_ms, t);
	if (c->json) {
		printf("{\"seq\":%" PRIu64 ",\"time_ms\":%" PRId64 ",\"time\":\"%s\",\"kind\":", e->seq,
		       e->time_ms, t);
		tally_json_write_str(stdout, what);
		if (e->result != NULL && e->result->code != TALLY__V1__RESULT_CODE__OK) {
			printf(",\"refused\":");
			tally_json_write_str(stdout, tally_result_name(e->result->code));
		}
		printf(",\"brand\":");
		tally_json_write_str(stdout, e->brand);
		printf(",\"member\":");
		tally_json_write_str(stdout, e->member);
		printf(",\"postings\":[");
		for (size_t i = 0; i < e->n_postings; i++)
			printf("%s{\"brand\":\"%s\",\"account\":%d,\"member\":\"%s\",\"points\":%" PRId64 "}",
			       i ? "," : "", e->postings[i]->brand, e->postings[i]->account,
			       e->postings[i]->member, e->postings[i]->points);
		printf("],\"bytes\":\"");
		hex(&se->entry);
		printf("\"}%s", last ? "" : ",");
		return;
	}
	static const char *const sys[] = {"member", "issuance", "redeemed", "expired", "clearing",
					  "adjustment"};
	printf("%6" PRIu64 " %-24s %-18s %s %s", e->seq, t, what, e->brand, e->member);
	if (e->result != NULL && e->result->code != TALLY__V1__RESULT_CODE__OK)
		printf("  refused: %s, %s", tally_result_name(e->result->code), e->result->message);
	for (size_t i = 0; i < e->n_postings; i++) {
		const Tally__V1__Posting *p = e->postings[i];
		bool member = p->account == TALLY__V1__SYSTEM_ACCOUNT__MEMBER;
		const char *acct = member ? p->member : (unsigned)p->account < 6 ? sys[p->account] : "?";
		printf("  %s/%s%s%s%s%+" PRId64, p->brand, acct,
		       member && p->bucket == TALLY__V1__BUCKET__HELD ? "(held)" : "",
		       p->partner[0] ? ":" : "", p->partner, p->points);
	}
	printf("\n");
}

static int cmd_entries(struct ctl *c)
{
	Tally__V1__Query q = TALLY__V1__QUERY__INIT;
	Tally__V1__QueryResult *res;
	if (strcmp(c->words[0], "entry") == 0) {
		Tally__V1__GetEntry g = TALLY__V1__GET_ENTRY__INIT;
		g.seq = (uint64_t)num(c, "seq", 0, true);
		g.proof = has(c, "proof");
		q.q_case = TALLY__V1__QUERY__Q_ENTRY;
		q.entry = &g;
		int rc = run_query(c, &q, &res);
		if (rc != EXIT_DONE)
			return rc;
		print_entry(c, res->entry, true);
		if (res->proof != NULL && !c->json) {
			printf("proof: index %" PRIu64 " of tree %" PRIu64 ", root ", res->proof->index,
			       res->proof->tree_size);
			hex(&res->proof->root);
			printf(", %zu hashes\n", res->proof->n_path);
		}
		if (c->json)
			printf("\n");
		return EXIT_DONE;
	}
	Tally__V1__ListEntries g = TALLY__V1__LIST_ENTRIES__INIT;
	g.from_seq = (uint64_t)num(c, "from", 0, false);
	g.limit = (uint32_t)num(c, "limit", 100, false);
	g.brand = opt_str(c, "brand");
	g.member = opt_str(c, "member");
	q.q_case = TALLY__V1__QUERY__Q_ENTRIES;
	q.entries = &g;
	int rc = run_query(c, &q, &res);
	if (rc != EXIT_DONE)
		return rc;
	if (c->json)
		printf("{\"next_seq\":%" PRIu64 ",\"entries\":[", res->next_seq);
	for (size_t i = 0; i < res->n_entries; i++)
		print_entry(c, res->entries[i], i + 1 == res->n_entries);
	if (c->json)
		printf("]}\n");
	else if (res->next_seq != 0)
		printf("(more from --from %" PRIu64 ")\n", res->next_seq);
	return EXIT_DONE;
}

/* The settlement currency of a pair: the currency both brands keep ("" when they
 * differ or cannot be read: amounts then show as micros). */
static void pair_currency(struct ctl *c, const Tally__V1__Settlement *s, char out[4])
{
	struct worth a = brand_worth(c, s->brand_a), b = brand_worth(c, s->brand_b);
	bool same = a.currency[0] != '\0' && strcmp(a.currency, b.currency) == 0;
	snprintf(out, 4, "%s", same ? a.currency : "");
}

static void print_settlement(struct ctl *c, const Tally__V1__Settlement *s, bool last)
{
	char currency[4], net[TALLY_MONEY_BYTES], until[TALLY_TIME_BYTES];
	pair_currency(c, s, currency);
	tally_time_format(s->until_ms, until);
	if (currency[0] != '\0')
		tally_money_format(s->net_micros, currency, net);
	else
		snprintf(net, sizeof(net), "%" PRId64 " micros", s->net_micros);
	if (c->json) {
		printf("{\"id\":%" PRIu64 ",\"brand_a\":\"%s\",\"brand_b\":\"%s\",\"until_ms\":%" PRId64
		       ",\"until\":\"%s\",\"count\":%" PRId64 ",\"net_micros\":%" PRId64
		       ",\"net\":\"%s\",\"currency\":\"%s\",\"payer\":\"%s\",\"payee\":\"%s\","
		       "\"confirmed\":%s,\"tree_size\":%" PRIu64 ",\"merkle_root\":\"",
		       s->id, s->brand_a, s->brand_b, s->until_ms, until, s->count, s->net_micros, net,
		       currency, s->payer, s->payee, s->confirmed ? "true" : "false", s->tree_size);
		hex(&s->merkle_root);
		printf("\"}%s", last ? "" : ",");
		return;
	}
	printf("settlement %" PRIu64 " %s/%s until %s: %" PRId64 " obligations, net %s %s -> %s, "
	       "confirmed %s, root at %" PRIu64 " ", s->id, s->brand_a, s->brand_b, until, s->count,
	       net, s->payer[0] ? s->payer : "-", s->payee[0] ? s->payee : "-",
	       s->confirmed ? "true" : "false", s->tree_size);
	hex(&s->merkle_root);
	printf("\n");
}

static int cmd_settlements(struct ctl *c)
{
	Tally__V1__Query q = TALLY__V1__QUERY__INIT;
	Tally__V1__ListSettlements g = TALLY__V1__LIST_SETTLEMENTS__INIT;
	char *pair[2] = {(char *)"", (char *)""};
	if (has(c, "brands") && split(dup(c, need(c, "brands")), pair, 2) != 2)
		return usage("--brands A,B");
	g.brand_a = pair[0];
	g.brand_b = pair[1];
	q.q_case = TALLY__V1__QUERY__Q_SETTLEMENTS;
	q.settlements = &g;
	Tally__V1__QueryResult *res;
	int rc = run_query(c, &q, &res);
	if (rc != EXIT_DONE)
		return rc;
	if (c->json)
		printf("{\"settlements\":[");
	for (size_t i = 0; i < res->n_settlements; i++)
		print_settlement(c, res->settlements[i], i + 1 == res->n_settlements);
	if (c->json)
		printf("]}\n");
	return EXIT_DONE;
}

/* ---- cluster ------------------------------------------------------------------------ */

static int run_admin(struct ctl *c, Tally__V1__Admin *a, Tally__V1__Response **res)
{
	Tally__V1__ResultCode rc = tally_client_admin(c->client, a, &c->arena, res);
	if (rc != CODE(OK))
		return transport_exit(c, rc, a->op == TALLY__V1__ADMIN__OP__STATUS ? "status" : "cluster",
				      a->op != TALLY__V1__ADMIN__OP__STATUS);
	if ((*res)->code != CODE(OK))
		return print_rejection(c, (*res)->code, (*res)->message);
	return EXIT_DONE;
}

static int cmd_status(struct ctl *c)
{
	Tally__V1__Admin a = TALLY__V1__ADMIN__INIT;
	a.op = TALLY__V1__ADMIN__OP__STATUS;
	Tally__V1__Response *res;
	int rc = run_admin(c, &a, &res);
	if (rc != EXIT_DONE)
		return rc;
	const Tally__V1__Status *s = res->status; /* an OK STATUS answer has one (libtally) */
	const Tally__V1__NodeInfo *l = s->leader;
	if (c->json) {
		printf("{\"leader\":{\"id\":%" PRIu64 ",\"address\":", l ? l->id : 0);
		tally_json_write_str(stdout, l && l->client_address ? l->client_address : "");
		printf("},\"nodes\":[");
		for (size_t i = 0; i < s->n_nodes; i++) {
			printf("%s{\"id\":%" PRIu64 ",\"address\":", i ? "," : "", s->nodes[i]->id);
			tally_json_write_str(stdout, s->nodes[i]->client_address ? s->nodes[i]->client_address : "");
			printf(",\"raft_address\":");
			tally_json_write_str(stdout, s->nodes[i]->address);
			printf(",\"role\":");
			tally_json_write_str(stdout, s->nodes[i]->role);
			printf("}");
		}
		printf("],\"applied_index\":%" PRIu64 ",\"term\":%" PRIu64 ",\"node_id\":%" PRIu64
		       ",\"rules\":%u,\"rules_max\":%u,\"state\":", s->applied_index, s->term,
		       s->node_id, (unsigned)s->rules, (unsigned)s->rules_max);
		tally_json_write_str(stdout, s->state ? s->state : "");
		printf("}\n");
		return EXIT_DONE;
	}
	printf("node %" PRIu64 " (%s), term %" PRIu64 ", applied %" PRIu64 ", leader %" PRIu64
	       ", rules %u (has up to %u)\n", s->node_id, s->state, s->term, s->applied_index,
	       l ? l->id : 0, (unsigned)s->rules, (unsigned)s->rules_max);
	bool hidden = false;
	for (size_t i = 0; i < s->n_nodes; i++) {
		const Tally__V1__NodeInfo *n = s->nodes[i];
		hidden |= n->address == NULL || n->address[0] == '\0';
		printf("  %" PRIu64 " %-8s %s (raft %s)\n", n->id, n->role,
		       n->client_address && n->client_address[0] ? n->client_address : "-",
		       n->address && n->address[0] ? n->address : "-");
	}
	if (hidden)
		printf("(node addresses are shown to operator keys and admin keys of scope *)\n");
	return EXIT_DONE;
}

static int cmd_cluster(struct ctl *c)
{
	if (c->n_words != 2)
		return usage("cluster add|assign|remove|transfer");
	Tally__V1__Admin a = TALLY__V1__ADMIN__INIT;
	const char *w = c->words[1];
	a.node_id = (uint64_t)num(c, "id", 0, strcmp(w, "transfer") != 0);
	if (strcmp(w, "add") == 0) {
		a.op = TALLY__V1__ADMIN__OP__ADD;
		a.address = need(c, "address");
	} else if (strcmp(w, "assign") == 0) {
		const char *role = need(c, "role");
		a.op = TALLY__V1__ADMIN__OP__ASSIGN;
		a.role = strcmp(role, "voter") == 0 ? 1 : strcmp(role, "standby") == 0 ? 0
		       : strcmp(role, "spare") == 0 ? 2 : 99;
		if (a.role == 99)
			return usage("--role voter|standby|spare");
	} else if (strcmp(w, "remove") == 0) {
		a.op = TALLY__V1__ADMIN__OP__REMOVE;
	} else if (strcmp(w, "transfer") == 0) {
		a.op = TALLY__V1__ADMIN__OP__TRANSFER;
	} else {
		return usage("cluster add|assign|remove|transfer");
	}
	Tally__V1__Response *res;
	int rc = run_admin(c, &a, &res);
	if (rc == EXIT_DONE)
		printf(c->json ? "{\"ok\":true}\n" : "ok\n");
	return rc;
}

/* `rules`: the rules the ledger applies (as the node asked knows them); `rules
 * upgrade [--version N]`: switch to rules N (default: the newest the leader has). */
static int cmd_rules(struct ctl *c)
{
	bool upgrade = c->n_words == 2 && strcmp(c->words[1], "upgrade") == 0;
	if (c->n_words != 1 && !upgrade)
		return usage("rules [upgrade [--version N]]");
	Tally__V1__Admin a = TALLY__V1__ADMIN__INIT;
	a.op = upgrade ? TALLY__V1__ADMIN__OP__RULES : TALLY__V1__ADMIN__OP__STATUS;
	if (upgrade)
		a.rules = (uint32_t)num(c, "version", 0, false);
	Tally__V1__Response *res;
	int rc = run_admin(c, &a, &res);
	if (rc != EXIT_DONE || upgrade) {
		if (rc == EXIT_DONE)
			printf(c->json ? "{\"ok\":true}\n" : "ok\n");
		return rc;
	}
	const Tally__V1__Status *s = res->status;
	if (c->json)
		printf("{\"rules\":%u,\"rules_max\":%u,\"node_id\":%" PRIu64 "}\n",
		       (unsigned)s->rules, (unsigned)s->rules_max, s->node_id);
	else
		printf("rules %u (node %" PRIu64 " has rules up to %u)\n", (unsigned)s->rules,
		       s->node_id, (unsigned)s->rules_max);
	return EXIT_DONE;
}

/* ---- main --------------------------------------------------------------------------- */

static int parse(int argc, char **argv, struct ctl *c)
{
	int i = 1;
	for (int k = 1; k < argc; k++)
		if (strcmp(argv[k], "--help") == 0 || strcmp(argv[k], "-h") == 0) {
			c->help = true;
			break;
		}
	for (; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
		const char *a = argv[i] + 2;
		if (strcmp(a, "help") == 0)
			continue;
		if (strcmp(a, "json") == 0) {
			c->json = true;
			continue;
		}
		int took = tally_connect_flag(&c->conn, argc, argv, i);
		if (took > 0) {
			i += took - 1;
			continue;
		}
		if (took < 0 || i + 1 >= argc)
			return usage("a global flag needs a value");
		if (strcmp(a, "timeout-ms") != 0)
			return usage("unknown global flag");
		c->timeout_ms = (unsigned)strtoul(argv[++i], NULL, 10);
	}
	for (; i < argc && strncmp(argv[i], "--", 2) != 0 && c->n_words < 2; i++)
		c->words[c->n_words++] = argv[i];
	if (c->help)
		return EXIT_DONE;
	for (; i < argc; i++) {
		if (strncmp(argv[i], "--", 2) != 0 && c->n_words < 2) { /* import's FILE */
			c->words[c->n_words++] = argv[i];
			continue;
		}
		if (strncmp(argv[i], "--", 2) != 0 || c->n_flags == FLAGS_MAX)
			return usage("expected --flag value");
		c->names[c->n_flags] = argv[i] + 2;
		bool boolean = strcmp(argv[i] + 2, "stale") == 0 || strcmp(argv[i] + 2, "proof") == 0 ||
			       strcmp(argv[i] + 2, "json") == 0;
		if (strcmp(argv[i] + 2, "json") == 0) {
			c->json = true;
			continue;
		}
		if (!boolean && i + 1 >= argc)
			return usage("a flag needs a value");
		c->values[c->n_flags++] = boolean ? "true" : argv[++i];
	}
	return c->n_words == 0 ? usage(NULL) : EXIT_DONE;
}

static int connect_cluster(struct ctl *c)
{
	char err[512];
	struct tally_client_options o = {.timeout_ms = c->timeout_ms,
					 .attempts = 20 /* ride out an election */};
	/* A key directory without --key: the admin key. */
	Tally__V1__ResultCode rc = tally_connect_open(&c->conn, "tallyctl", "admin", o, &c->client,
						      err, sizeof(err));
	if (rc == CODE(OK))
		return EXIT_DONE;
	fprintf(stderr, "tallyctl: %s\n", err);
	/* Nothing was sent yet: never an unknown outcome. */
	return rc == CODE(UNAUTHENTICATED) ? EXIT_REJECTED
	       : rc == CODE(INVALID_ARGUMENT) ? EXIT_USAGE : EXIT_UNAVAILABLE;
}

static int cmd_import(struct ctl *c)
{
	const char *brand = need(c, "brand");
	if (c->n_words != 2)
		return usage("import --brand B FILE.csv");
	return ctl_import(c->client, brand, c->words[1], c->json);
}

/* Each command: what runs it, its usage and what it does (`tallyctl --help` lists them
 * all, `tallyctl COMMAND --help` one). */
static const struct {
	const char *word;
	int (*fn)(struct ctl *);
	const char *usage;
	const char *what;
} commands[] = {
	{"brand", cmd_brand, "brand create|update --id B --name N [--point-value-micros N] [--currency C]\n"
		  "        [--expiry-months N] [--tiers NAME:POINTS,...] [--tier-window-days N]\n"
		  "        [--transfer-max N] [--transfer-daily-cap N] [--community-daily-cap N]",
	 "Registers a brand or changes its settings. A point is worth --point-value-micros\n"
	 "millionths of --currency (ISO 4217; defaults 10000 and EUR); points expire\n"
	 "--expiry-months after they are earned (0: never); tiers are reached by points earned\n"
	 "within the last --tier-window-days."},
	{"member", cmd_member, "member open|update --id M [--segment owner_passenger|owner_commercial|fan|prospect|channel_partner]",
	 "Opens a member (one id across brands) or changes the member's segment."},
	{"accrue", cmd_points, "accrue --brand B --member M --points N [--reason R] [--reference REF]",
	 "Gives a member points (a purchase, a service, community activity)."},
	{"redeem", cmd_points, "redeem --brand B --member M --points N [--reason R] [--reference REF]",
	 "Takes points from a member at once, first-expiring first; refused with\n"
	 "INSUFFICIENT_POINTS beyond the available balance."},
	{"hold", cmd_points, "hold --brand B --member M --points N [--timeout-s N] [--reference REF]",
	 "Sets points aside for an order (the mall's checkout); they return to the member when\n"
	 "the hold times out, by ledger time."},
	{"capture", cmd_points, "capture --hold H [--points N]",
	 "Redeems a hold, or part of it (the rest returns to the member)."},
	{"void", cmd_points, "void --hold H", "Releases a hold: its points return to the member."},
	{"reverse", cmd_points, "reverse --entry SEQ [--points N] [--reason R]",
	 "Refunds a redemption or capture (entry SEQ), wholly or in part."},
	{"transfer", cmd_points, "transfer --brand B --from M --to M --points N [--reason R]",
	 "Moves points between two members of a brand (within its transfer limits)."},
	{"adjust", cmd_points, "adjust --brand B --member M --points +-N --reason TEXT",
	 "Corrects a balance by hand; the reason is kept in the journal."},
	{"expire", cmd_points, "expire", "Runs an expiry sweep now (the leader also runs them on a timer)."},
	{"agreement", cmd_partners, "agreement set --from A --to B --rate NUM/DEN [--min N] [--max N] [--daily-cap N] [--price-micros N]",
	 "Sets the rate at which A's points become B's, and what A pays B per B point."},
	{"exchange", cmd_partners, "exchange --from A --to B --member M --points N",
	 "Converts a member's A points into B points at the agreed rate; A then owes B."},
	{"settle", cmd_partners, "settle --brands A,B --until TIME",
	 "Nets what A and B owe each other for exchanges up to TIME (in the past)."},
	{"settlement", cmd_partners, "settlement confirm --id S", "The payee confirms settlement S."},
	{"balance", cmd_balances, "balance --brand B --member M [--stale]",
	 "A member's balance in a brand, and its worth at the brand's point value. --stale\n"
	 "reads the node's own state without asking the leader."},
	{"balances", cmd_balances, "balances --brand B --members M1,M2,... [--stale]",
	 "Several members' balances in one query."},
	{"entries", cmd_entries, "entries [--from SEQ] [--limit N] [--brand B] [--member M]",
	 "Pages through the journal, from SEQ, optionally one brand's or member's entries."},
	{"entry", cmd_entries, "entry --seq N [--proof]",
	 "One journal entry, with --proof its Merkle inclusion proof."},
	{"settlements", cmd_settlements, "settlements [--brands A,B]", "Settlements, with their net and cut-off."},
	{"digest", cmd_digest, "digest [--stale]",
	 "The journal's size and Merkle root, the state digest and ledger time."},
	{"import", cmd_import, "import --brand B FILE.csv",
	 "Imports legacy balances, one line each: member,points,expiry,segment[,reference].\n"
	 "expiry is a date (good through that day, UTC), an RFC 3339 time, or empty (never);\n"
	 "the member is opened when new. 1,000 lines to a request; each line's request ids\n"
	 "come from the file's SHA-256 and its number, so a line is applied once however\n"
	 "often it is sent. FILE.import remembers how far it got: the same command again\n"
	 "resumes there. Refused lines go to FILE.rejected.csv with the reason (exit 1).\n"
	 "An admin key; the points are issued as lots that keep their expiry, and each\n"
	 "journal entry is an import."},
	{"status", cmd_status, "status", "The cluster: nodes, roles, the leader, terms and applied indices."},
	{"cluster", cmd_cluster, "cluster add --id N --address RAFT|CLIENT | assign --id N --role voter|standby|spare\n"
		    "        | remove --id N | transfer [--id N]",
	 "Changes the membership: add a node (then assign it a role), remove one, or hand\n"
	 "leadership to node N (any other voter without --id)."},
	{"rules", cmd_rules, "rules [upgrade [--version N]]",
	 "The rules the ledger applies (how an account's lots are kept, ...), or switches the\n"
	 "ledger to rules N (default: the newest the leader has) from the next command on. A\n"
	 "new ledger is under the newest rules from its first entry; a ledger begun under\n"
	 "older ones is switched only this way, once every node runs a tallyd that has them\n"
	 "(a node without them stops at the switch). Needs an operator key or an admin key\n"
	 "of scope *."},
};

#define GLOBAL_USAGE \
	"usage: tallyctl [--cluster A,B] [--key-dir D [--key NAME] | --key-file F] [--ca FILE | --insecure]\n" \
	"                [--timeout-ms N] [--json] COMMAND ... [--help]\n"
#define USAGE_NOTES \
	"Every mutating command takes --request-id (generated and printed when omitted).\n" \
	"TIME is RFC 3339 (2026-12-01T00:00:00Z, or an offset such as +08:00) or UNIX ms;\n" \
	"times print as RFC 3339 in UTC, money with its currency (60.00 CNY); --json keeps\n" \
	"the raw numbers (*_ms, *_micros) and adds the readable form beside them.\n" \
	"Exit: 0 done (also a replay), 1 rejected (definite), 2 usage error, 3 not applied\n" \
	"(cluster unavailable; for a read: no answer), 4 outcome unknown (a command or\n" \
	"cluster change was sent and not answered: retry with the same --request-id).\n"

static void print_usage(FILE *f)
{
	fputs(GLOBAL_USAGE, f);
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		fprintf(f, "  %s\n", commands[i].usage);
	fputs(USAGE_NOTES, f);
}

static int usage(const char *why)
{
	if (why != NULL)
		fprintf(stderr, "tallyctl: %s\n", why);
	print_usage(stderr);
	return EXIT_USAGE;
}

/* --help: everything, or one command's usage and what it does (stdout, exit 0). */
static int help(const char *word)
{
	if (word == NULL) {
		print_usage(stdout);
		printf("tallyctl COMMAND --help says what a command does.\n");
		return EXIT_DONE;
	}
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (strcmp(commands[i].word, word) == 0) {
			printf("usage: tallyctl [global flags] %s\n\n%s\n\n%s", commands[i].usage,
			       commands[i].what, USAGE_NOTES);
			return EXIT_DONE;
		}
	return usage("unknown command");
}

static int dispatch(struct ctl *c)
{
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		if (strcmp(c->words[0], commands[i].word) != 0)
			continue;
		int rc = connect_cluster(c);
		return rc != EXIT_DONE ? rc : commands[i].fn(c);
	}
	return usage("unknown command");
}

int main(int argc, char **argv)
{
	static struct ctl c;
	tally_connect_from_env(&c.conn);
	int rc = parse(argc, argv, &c);
	if (rc != EXIT_DONE)
		return rc;
	if (c.help)
		return help(c.n_words > 0 ? c.words[0] : NULL);
	tally_arena_init(&c.arena, 64 << 10, 0);
	rc = dispatch(&c);
	if (c.client != NULL)
		tally_client_close(c.client);
	tally_arena_free(&c.arena);
	return rc;
}
