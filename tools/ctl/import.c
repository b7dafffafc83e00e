/*
 * tallyctl import — legacy balances from a CSV file (see import.h).
 */
#include "tools/ctl/import.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "ledger/arena.h"
#include "ledger/ledger.h"
#include "rpc/files.h"
#include "rpc/json.h"
#include "rpc/units.h"

#define CODE(name) TALLY__V1__RESULT_CODE__##name
#define IMPORT_PATH_BYTES_MAX 4096
#define IMPORT_ARENA_CHUNK (1u << 20)
#define IMPORT_MEMBER_BYTES_MAX 64
#define IMPORT_REFERENCE_BYTES_MAX 128
#define MS_PER_DAY 86400000LL

enum { EXIT_DONE = 0, EXIT_REJECTED = 1, EXIT_USAGE = 2, EXIT_UNAVAILABLE = 3, EXIT_UNKNOWN = 4 };

/* One line of the file, parsed. */
struct line {
	unsigned long no;
	char member[IMPORT_MEMBER_BYTES_MAX + 1];
	int64_t points;
	int64_t expires_ms;
	Tally__V1__Segment segment;
	char reference[IMPORT_REFERENCE_BYTES_MAX + 1];
};

struct import {
	struct tally_client *client;
	const char *brand;
	char id[20];                /* the first 16 hex digits of the file's SHA-256 */
	char hash[65];
	unsigned long lines_total;  /* lines in the file */
	unsigned long done;         /* lines answered, in order */
	unsigned long imported, rejected, resumed_after;
	FILE *rejects;
	char state_path[IMPORT_PATH_BYTES_MAX];
	double t0;
};

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- the file ------------------------------------------------------------------- */

/* The file's SHA-256 (hex) and its number of lines. */
static int file_scan(const char *path, char hash[65], unsigned long *lines)
{
	FILE *f = fopen(path, "rb");
	if (f == NULL)
		return -1;
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	EVP_DigestInit_ex(md, EVP_sha256(), NULL);
	unsigned char buf[1 << 16], sha[32];
	size_t n;
	int last = '\n';
	*lines = 0;
	while ((n = fread(buf, 1, sizeof(buf), f)) > 0) {
		EVP_DigestUpdate(md, buf, n);
		for (size_t i = 0; i < n; i++)
			*lines += buf[i] == '\n';
		last = buf[n - 1];
	}
	*lines += last != '\n';
	EVP_DigestFinal_ex(md, sha, NULL);
	EVP_MD_CTX_free(md);
	bool failed = ferror(f) != 0;
	fclose(f);
	for (int i = 0; i < 32; i++)
		snprintf(hash + 2 * i, 3, "%02x", sha[i]);
	return failed ? -1 : 0;
}

/* FILE.import: the line after which a run of the same file resumes (0: none). */
static unsigned long state_load(const struct import *im)
{
	FILE *f = fopen(im->state_path, "r");
	if (f == NULL)
		return 0;
	char hash[65] = "";
	unsigned long line = 0;
	bool ok = fscanf(f, "tally-import v1 sha256 %64s line %lu", hash, &line) == 2;
	fclose(f);
	return ok && strcmp(hash, im->hash) == 0 ? line : 0;
}

/* Records that every line up to im->done was answered (durably: rpc/files). */
static int state_save(const struct import *im)
{
	char text[128], err[IMPORT_PATH_BYTES_MAX + 64];
	int n = snprintf(text, sizeof(text), "tally-import v1 sha256 %s line %lu\n", im->hash,
			 im->done);
	if (tally_file_replace(im->state_path, text, (size_t)n, 0644, err, sizeof(err)) == 0)
		return 0;
	fprintf(stderr, "\ntallyctl import: %s\n", err);
	return -1;
}

/* ---- a line ----------------------------------------------------------------------- */

Tally__V1__Segment ctl_segment_named(const char *s)
{
	char upper[32];
	size_t n = strlen(s);
	if (n == 0 || n >= sizeof(upper))
		return TALLY__V1__SEGMENT__SEGMENT_UNSPECIFIED;
	for (size_t i = 0; i <= n; i++)
		upper[i] = (char)toupper((unsigned char)s[i]);
	const ProtobufCEnumValue *v =
		protobuf_c_enum_descriptor_get_value_by_name(&tally__v1__segment__descriptor, upper);
	return v != NULL ? (Tally__V1__Segment)v->value : TALLY__V1__SEGMENT__SEGMENT_UNSPECIFIED;
}

/* "2027-03-31": good through that day (expires at the next midnight, UTC); an RFC
 * 3339 time as it is; "" never. */
static bool expiry_of(const char *s, int64_t *ms, char *why, size_t cap)
{
	if (*s == '\0') {
		*ms = 0;
		return true;
	}
	char t[48];
	bool date = strlen(s) == 10 && s[4] == '-' && s[7] == '-';
	snprintf(t, sizeof(t), date ? "%sT00:00:00Z" : "%s", s);
	if (!tally_time_parse(t, ms, why, cap))
		return false;
	if (date)
		*ms += MS_PER_DAY;
	return true;
}

/* Splits the line into at most 5 comma-separated fields, trimmed; their number. */
static size_t fields(char *text, char *f[5])
{
	size_t n = 0;
	for (char *s = text; n < 5; n++) {
		char *comma = strchr(s, ',');
		if (comma != NULL)
			*comma = '\0';
		while (isspace((unsigned char)*s))
			s++;
		char *end = s + strlen(s);
		while (end > s && isspace((unsigned char)end[-1]))
			*--end = '\0';
		f[n] = s;
		if (comma == NULL)
			return n + 1;
		s = comma + 1;
	}
	return n + 1; /* more than 5: refused by the caller */
}

/* Parses text into l; false with why (a rejected line). */
static bool line_parse(char *text, struct line *l, char *why, size_t cap)
{
	char *f[5];
	size_t n = fields(text, f);
	if (n < 4 || n > 5) {
		snprintf(why, cap, "expected member,points,expiry,segment[,reference]");
		return false;
	}
	char *end;
	errno = 0;
	long long points = strtoll(f[1], &end, 10);
	if (*f[0] == '\0' || strlen(f[0]) > IMPORT_MEMBER_BYTES_MAX) {
		snprintf(why, cap, "member: 1..%d bytes", IMPORT_MEMBER_BYTES_MAX);
		return false;
	}
	if (*f[1] == '\0' || *end != '\0' || errno != 0 || points <= 0) {
		snprintf(why, cap, "points: a whole number above 0, not '%.20s'", f[1]);
		return false;
	}
	if (!expiry_of(f[2], &l->expires_ms, why, cap))
		return false;
	if ((l->segment = ctl_segment_named(f[3])) == TALLY__V1__SEGMENT__SEGMENT_UNSPECIFIED) {
		snprintf(why, cap, "segment: unknown '%.32s'", f[3]);
		return false;
	}
	if (n == 5 && strlen(f[4]) > IMPORT_REFERENCE_BYTES_MAX) {
		snprintf(why, cap, "reference: at most %d bytes", IMPORT_REFERENCE_BYTES_MAX);
		return false;
	}
	snprintf(l->member, sizeof(l->member), "%s", f[0]);
	snprintf(l->reference, sizeof(l->reference), "%s", n == 5 ? f[4] : "");
	l->points = points;
	return true;
}

static void reject_line(struct import *im, unsigned long no, const char *member, const char *why)
{
	im->rejected++;
	fprintf(im->rejects, "%lu,%s,\"", no, member);
	for (const char *p = why; *p; p++)
		fputs(*p == '"' ? "\"\"" : (char[2]){*p, 0}, im->rejects);
	fputs("\"\n", im->rejects);
}

/* ---- a batch ---------------------------------------------------------------------- */

/* A line the parser refused, reported once its batch is answered (a batch sent again
 * after a resume must not report it twice). */
struct refusal {
	unsigned long no;
	char member[IMPORT_MEMBER_BYTES_MAX + 1];
	char why[160];
};

/* The two commands of a line: open the member (kept when it exists), import the points. */
static void line_commands(const struct import *im, struct tally_arena *a, const struct line *l,
			  Tally__V1__Command *cmd[2])
{
	char rid[64];
	for (int k = 0; k < 2; k++) {
		cmd[k] = tally_arena_zalloc(a, sizeof(*cmd[k]));
		tally__v1__command__init(cmd[k]);
		snprintf(rid, sizeof(rid), "imp-%s-%lu-%c", im->id, l->no, k == 0 ? 'm' : 'p');
		cmd[k]->request_id = tally_arena_strdup(a, rid);
	}
	Tally__V1__OpenMember *om = tally_arena_zalloc(a, sizeof(*om));
	tally__v1__open_member__init(om);
	om->id = tally_arena_strdup(a, l->member);
	om->segment = l->segment;
	cmd[0]->body_case = TALLY__V1__COMMAND__BODY_OPEN_MEMBER;
	cmd[0]->open_member = om;
	Tally__V1__ImportPoints *ip = tally_arena_zalloc(a, sizeof(*ip));
	tally__v1__import_points__init(ip);
	ip->brand = (char *)im->brand;
	ip->member = om->id;
	ip->points = l->points;
	ip->expires_ms = l->expires_ms;
	ip->reference = tally_arena_strdup(a, l->reference);
	cmd[1]->body_case = TALLY__V1__COMMAND__BODY_IMPORT_POINTS;
	cmd[1]->import_points = ip;
}

static bool undecided(Tally__V1__ResultCode code)
{
	return code == CODE(NOT_LEADER) || code == CODE(UNAVAILABLE) || code == CODE(TIMEOUT);
}

/* Sends cmds (same request ids every time) until each has a definite answer in
 * results[]: EXIT_DONE, or EXIT_UNAVAILABLE / EXIT_UNKNOWN when some never got one
 * (the last try's outcome). */
static int batch_send(struct import *im, struct tally_arena *a, Tally__V1__Command **cmds,
		      size_t n, Tally__V1__CommandResult **results)
{
	size_t *pending = tally_arena_alloc(a, n * sizeof(*pending));
	Tally__V1__Command **send = tally_arena_alloc(a, n * sizeof(*send));
	for (size_t i = 0; i < n; i++)
		pending[i] = i;
	size_t left = n;
	bool unknown = false;
	for (int attempt = 0; attempt <= IMPORT_RETRIES && left > 0; attempt++) {
		for (size_t k = 0; k < left; k++)
			send[k] = cmds[pending[k]];
		Tally__V1__BatchResult *br = NULL;
		Tally__V1__ResultCode rc = tally_client_batch(im->client, send, left, a, &br);
		unknown = rc == CODE(TIMEOUT);
		if (rc != CODE(OK))
			continue;
		size_t keep = 0;
		for (size_t k = 0; k < left; k++) {
			Tally__V1__CommandResult *r = br->results[k];
			unknown |= r->code == CODE(TIMEOUT);
			if (undecided(r->code))
				pending[keep++] = pending[k];
			else
				results[pending[k]] = r;
		}
		left = keep;
	}
	if (left == 0)
		return EXIT_DONE;
	fprintf(stderr, "\ntallyctl import: %zu commands without a definite answer (%s); run the "
			"same import again to resume\n", left, tally_client_error(im->client));
	return unknown ? EXIT_UNKNOWN : EXIT_UNAVAILABLE;
}

/* Sends the batch's lines and tallies each line's outcome. */
static int batch_run(struct import *im, struct tally_arena *a, const struct line *lines, size_t n,
		     const struct refusal *refused, size_t n_refused)
{
	Tally__V1__Command **cmds = tally_arena_alloc(a, 2 * n * sizeof(*cmds));
	Tally__V1__CommandResult **res = tally_arena_zalloc(a, 2 * n * sizeof(*res));
	for (size_t i = 0; i < n; i++)
		line_commands(im, a, &lines[i], &cmds[2 * i]);
	int rc = n > 0 ? batch_send(im, a, cmds, 2 * n, res) : EXIT_DONE;
	if (rc != EXIT_DONE)
		return rc;
	for (size_t i = 0; i < n_refused; i++)
		reject_line(im, refused[i].no, refused[i].member, refused[i].why);
	for (size_t i = 0; i < n; i++) {
		const Tally__V1__CommandResult *open = res[2 * i], *imp = res[2 * i + 1];
		char why[300];
		if (open->code != CODE(OK) && open->code != CODE(ALREADY_EXISTS)) {
			snprintf(why, sizeof(why), "member: %s: %s", tally_result_name(open->code),
				 open->message);
			reject_line(im, lines[i].no, lines[i].member, why);
		} else if (imp->code != CODE(OK)) {
			snprintf(why, sizeof(why), "%s: %s", tally_result_name(imp->code), imp->message);
			reject_line(im, lines[i].no, lines[i].member, why);
		} else {
			im->imported++;
		}
	}
	return EXIT_DONE;
}

/* ---- the run ---------------------------------------------------------------------- */

static void progress(const struct import *im, bool last)
{
	if (!isatty(STDERR_FILENO))
		return;
	double secs = now_s() - im->t0;
	unsigned long sent = im->done - im->resumed_after;
	fprintf(stderr, "\r  [%-30.*s] %lu/%lu lines, %.0f lines/s, %lu rejected ",
		(int)(30 * im->done / (im->lines_total ? im->lines_total : 1)),
		"##############################", im->done, im->lines_total,
		secs > 0 ? (double)sent / secs : 0.0, im->rejected);
	if (last)
		fputc('\n', stderr);
}

/* Reads up to IMPORT_BATCH_LINES lines to send into lines[] and the lines the parser
 * refused into refused[]; *no counts the lines read. False at the end of the file. */
static bool batch_read(struct import *im, FILE *f, unsigned long *no, struct line *lines,
		       size_t *n, struct refusal *refused, size_t *n_refused)
{
	char text[IMPORT_LINE_BYTES_MAX + 2];
	*n = *n_refused = 0;
	while (*n + *n_refused < IMPORT_BATCH_LINES && fgets(text, sizeof(text), f) != NULL) {
		++*no;
		size_t len = strlen(text);
		bool too_long = (len == 0 || text[len - 1] != '\n') && !feof(f);
		if (too_long) { /* skip the rest of it */
			int ch;
			while ((ch = fgetc(f)) != EOF && ch != '\n')
				;
		}
		text[strcspn(text, "\r\n")] = '\0';
		if (*no <= im->resumed_after || text[strspn(text, " \t")] == '\0' ||
		    (*no == 1 && strncmp(text, "member,", 7) == 0))
			continue;
		struct refusal *r = &refused[*n_refused];
		snprintf(r->member, sizeof(r->member), "%.*s", (int)strcspn(text, ","), text);
		if (too_long)
			snprintf(r->why, sizeof(r->why), "longer than %d bytes", IMPORT_LINE_BYTES_MAX);
		else if (line_parse(text, &lines[*n], r->why, sizeof(r->why))) {
			lines[(*n)++].no = *no;
			continue;
		}
		r->no = *no;
		++*n_refused;
	}
	return *n + *n_refused > 0 || !feof(f);
}

static void summary(const struct import *im, const char *path, bool json)
{
	double secs = now_s() - im->t0;
	double rate = secs > 0 ? (double)(im->done - im->resumed_after) / secs : 0;
	if (json) {
		printf("{\"brand\":\"%s\",\"file\":", im->brand);
		tally_json_write_str(stdout, path);
		printf(",\"lines\":%lu,\"imported\":%lu,\"rejected\":%lu,\"resumed_after\":%lu,"
		       "\"seconds\":%.2f,\"lines_per_s\":%.0f}\n", im->done, im->imported,
		       im->rejected, im->resumed_after, secs, rate);
		return;
	}
	printf("imported %lu lines of %s into %s", im->imported, path, im->brand);
	if (im->resumed_after > 0)
		printf(" (resumed after line %lu)", im->resumed_after);
	printf(", %lu rejected", im->rejected);
	if (im->rejected > 0)
		printf(" (the reasons are in %s.rejected.csv)", path);
	printf(", in %.1f s (%.0f lines/s)\n", secs, rate);
}

int ctl_import(struct tally_client *client, const char *brand, const char *path, bool json)
{
	struct import im = {.client = client, .brand = brand, .t0 = now_s()};
	if (strlen(path) + 16 > IMPORT_PATH_BYTES_MAX || file_scan(path, im.hash, &im.lines_total) != 0) {
		fprintf(stderr, "tallyctl import: %s: %s\n", path, strerror(errno));
		return EXIT_USAGE;
	}
	snprintf(im.id, sizeof(im.id), "%.16s", im.hash);
	snprintf(im.state_path, sizeof(im.state_path), "%s.import", path);
	im.resumed_after = im.done = state_load(&im);
	char rejects[IMPORT_PATH_BYTES_MAX + 16];
	snprintf(rejects, sizeof(rejects), "%s.rejected.csv", path);
	im.rejects = fopen(rejects, im.resumed_after > 0 ? "a" : "w");
	FILE *f = fopen(path, "r");
	if (im.rejects == NULL || f == NULL) {
		fprintf(stderr, "tallyctl import: %s: %s\n", im.rejects ? path : rejects, strerror(errno));
		return EXIT_USAGE;
	}
	if (im.resumed_after == 0)
		fprintf(im.rejects, "line,member,reason\n");
	struct tally_arena a;
	tally_arena_init(&a, IMPORT_ARENA_CHUNK, 0);
	struct line *lines = malloc(IMPORT_BATCH_LINES * sizeof(*lines));
	struct refusal *refused = malloc(IMPORT_BATCH_LINES * sizeof(*refused));
	unsigned long no = 0;
	size_t n, n_refused;
	int rc = lines && refused ? EXIT_DONE : EXIT_UNAVAILABLE;
	while (rc == EXIT_DONE && batch_read(&im, f, &no, lines, &n, refused, &n_refused)) {
		rc = batch_run(&im, &a, lines, n, refused, n_refused);
		tally_arena_reset(&a);
		if (rc == EXIT_DONE && no > im.done) {
			im.done = no;
			fflush(im.rejects);
			state_save(&im); /* a failure is named; the import goes on */
		}
		progress(&im, false);
	}
	progress(&im, true);
	free(lines);
	free(refused);
	tally_arena_free(&a);
	fclose(f);
	fclose(im.rejects);
	summary(&im, path, json);
	return rc != EXIT_DONE ? rc : im.rejected > 0 ? EXIT_REJECTED : EXIT_DONE;
}
