/*
 * tally-cdc — the journal as a stream of messages on RabbitMQ (README "Change stream").
 *
 *   tally-cdc publish --cursor FILE [--broker URL] [--exchange NAME] [--queue NAME]
 *                     [--format protobuf|json] [--window N] [--poll-ms N] [--stale]
 *                     [--exit-at-end] [--cluster A,B] [--key-dir D [--key NAME] |
 *                     --key-file F] [--ca FILE | --insecure]
 *   tally-cdc consume --queue NAME [--broker URL] [--exchange NAME] [--from-seq N]
 *                     [--until-seq N] [--quiet]
 *
 * The broker URL may also come from TALLY_CDC_BROKER (so a password need not be on a
 * command line). Exit codes: 0 done (stopped by SIGTERM/SIGINT, caught up with
 * --exit-at-end, --until-seq reached), 1 a failure named on stderr, 2 usage.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tools/cdc/cdc.h"

volatile sig_atomic_t cdc_stop;

double cdc_now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void cdc_sleep_ms(unsigned ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000};
	nanosleep(&ts, NULL); /* a signal cuts it short, and the loop sees cdc_stop */
}

void cdc_backoff(unsigned *ms)
{
	cdc_sleep_ms(*ms);
	*ms = *ms * 2 < CDC_RETRY_MS_MAX ? *ms * 2 : CDC_RETRY_MS_MAX;
}

static void on_signal(int sig)
{
	(void)sig;
	cdc_stop = 1;
}

/* The help, on stdout for --help (exit 0), on stderr after a usage error (exit 2). */
static int usage(const char *why)
{
	FILE *f = why != NULL ? stderr : stdout;
	if (why != NULL)
		fprintf(stderr, "tally-cdc: %s\n", why);
	fprintf(f,
		"usage: tally-cdc publish --cursor FILE [--broker URL] [--exchange NAME] [--queue NAME]\n"
		"                         [--format protobuf|json] [--window N] [--poll-ms N] [--stale]\n"
		"                         [--exit-at-end] [--cluster A,B] [--key-dir D [--key NAME] |\n"
		"                         --key-file F] [--ca FILE | --insecure]\n"
		"       tally-cdc consume --queue NAME [--broker URL] [--exchange NAME] [--from-seq N]\n"
		"                         [--until-seq N] [--quiet]\n"
		"\n"
		"publish streams every journal entry, in order, to a durable exchange (persistent\n"
		"messages, message id = the entry's sequence number, publisher confirms) and resumes\n"
		"after its cursor; consume prints each entry once, dropping copies, failing on a gap.\n"
		"  --broker       amqp://USER:PASS@HOST:PORT/VHOST (or TALLY_CDC_BROKER); default\n"
		"                 " CDC_BROKER_DEFAULT "\n"
		"  --exchange     the durable topic exchange (default " CDC_EXCHANGE_DEFAULT "); routing\n"
		"                 keys are KIND.BRAND: command.acme, lot_expired.acme, hold_released.acme\n"
		"  --queue        a durable queue bound to every entry (\"#\"), declared if missing\n"
		"  --cursor       the last entry the broker confirmed (seq and leaf hash), replaced\n"
		"                 durably after each page; publishing resumes after it, and stops if\n"
		"                 the cluster's entry at that seq is another\n"
		"  --format       message bodies: protobuf (tally.v1.StoredEntry, the default) or json\n"
		"  --window       entries per page and per wait for confirms (1..%d, default %d)\n"
		"  --poll-ms      the wait before reading the journal again once caught up (default %d)\n"
		"  --stale        read the journal from the first node of --cluster without a barrier\n"
		"  --exit-at-end  stop once caught up and report entries/s\n"
		"  --cluster      the nodes' client addresses (or TALLY_CLUSTER)\n"
		"  --key-dir      a directory of client keys, D/NAME.key (or TALLY_KEY_DIR); publish\n"
		"                 needs an auditor's key (scope *)\n"
		"  --key          the key's NAME in --key-dir (default auditor)\n"
		"  --key-file     a client key file instead (or TALLY_KEY_FILE)\n"
		"  --ca           the cluster's CA certificate: TLS (or TALLY_CA)\n"
		"  --insecure     plaintext, for a cluster started with --insecure\n"
		"  --from-seq     consume: the first entry expected (default: the first that comes)\n"
		"  --until-seq    consume: stop once this entry is printed\n"
		"  --quiet        consume: print only the summary\n"
		"exit: 0 done (SIGTERM or SIGINT, --exit-at-end, --until-seq), 1 a failure (named),\n"
		"2 usage\n",
		CDC_WINDOW_MAX, CDC_WINDOW_DEFAULT, CDC_POLL_MS_DEFAULT);
	return why != NULL ? CDC_EXIT_USAGE : CDC_EXIT_DONE;
}

/* A number flag's value in [lo, hi], or false. */
static bool number(const char *s, unsigned long long lo, unsigned long long hi,
		   unsigned long long *out)
{
	char *end;
	*out = strtoull(s, &end, 10);
	return *s != '\0' && *end == '\0' && *out >= lo && *out <= hi;
}

/* One flag with its value at argv[*i]: 0, or the usage exit. */
static int parse_flag(struct cdc_opts *o, int argc, char **argv, int *i)
{
	const char *a = argv[*i];
	int took = tally_connect_flag(&o->conn, argc, argv, *i);
	if (took > 0) {
		*i += took - 1;
		return 0;
	}
	if (strcmp(a, "--stale") == 0 || strcmp(a, "--exit-at-end") == 0 || strcmp(a, "--quiet") == 0) {
		*(a[2] == 's' ? &o->stale : a[2] == 'e' ? &o->exit_at_end : &o->quiet) = true;
		return 0;
	}
	if (took < 0 || *i + 1 >= argc)
		return usage("unknown flag or a flag without its value");
	const char *v = argv[++*i];
	unsigned long long n;
	if (strcmp(a, "--broker") == 0)
		o->broker = v;
	else if (strcmp(a, "--exchange") == 0)
		o->exchange = v;
	else if (strcmp(a, "--queue") == 0)
		o->queue = v;
	else if (strcmp(a, "--cursor") == 0)
		o->cursor = v;
	else if (strcmp(a, "--format") == 0 && (strcmp(v, "json") == 0 || strcmp(v, "protobuf") == 0))
		o->format = v[0] == 'j' ? CDC_FORMAT_JSON : CDC_FORMAT_PROTOBUF;
	else if (strcmp(a, "--window") == 0 && number(v, 1, CDC_WINDOW_MAX, &n))
		o->window = (unsigned)n;
	else if (strcmp(a, "--poll-ms") == 0 && number(v, 1, 60000, &n))
		o->poll_ms = (unsigned)n;
	else if (strcmp(a, "--from-seq") == 0 && number(v, 1, UINT64_MAX, &n))
		o->from_seq = n;
	else if (strcmp(a, "--until-seq") == 0 && number(v, 1, UINT64_MAX, &n))
		o->until_seq = n;
	else
		return usage("unknown flag, or a value out of range");
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return usage("a command is needed");
	if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)
		return usage(NULL);
	bool publish = strcmp(argv[1], "publish") == 0;
	if (!publish && strcmp(argv[1], "consume") != 0)
		return usage("the command is publish or consume");
	struct cdc_opts o = {.broker = getenv("TALLY_CDC_BROKER"), .exchange = CDC_EXCHANGE_DEFAULT,
			     .window = CDC_WINDOW_DEFAULT, .poll_ms = CDC_POLL_MS_DEFAULT};
	if (o.broker == NULL)
		o.broker = CDC_BROKER_DEFAULT;
	tally_connect_from_env(&o.conn);
	for (int i = 2; i < argc; i++) {
		if (strcmp(argv[i], "--help") == 0)
			return usage(NULL);
		if (parse_flag(&o, argc, argv, &i) != 0)
			return CDC_EXIT_USAGE;
	}
	if (publish && o.cursor == NULL)
		return usage("publish needs --cursor FILE");
	if (!publish && o.queue == NULL)
		return usage("consume needs --queue NAME");
	struct sigaction sa = {.sa_handler = on_signal}; /* no SA_RESTART: waits are cut short */
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	return publish ? cdc_publish(&o) : cdc_consume(&o);
}
