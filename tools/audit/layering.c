/*
 * tally-audit layering — the user-layering report a brand runs its program by: its
 * members by segment × maturity × activity at a time, with members, points
 * outstanding and points earned per cell; as a table, CSV, and a PNG heat map drawn by
 * gnuplot. Definitions and thresholds: README "Auditing"; the thresholds are flags.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "tools/audit/audit.h"
#include "tools/audit/books.h"

#define DAY_MS INT64_C(86400000)
#define SEGMENTS 6   /* tally.v1.Segment: unspecified .. channel_partner */
#define MATURITIES 4
#define ACTIVITIES 3

static const char *const segment_names[SEGMENTS] = {"unspecified", "owner_passenger",
						     "owner_commercial", "fan", "prospect",
						     "channel_partner"};
static const char *const maturity_names[MATURITIES] = {"new", "growing", "mature", "lapsing"};
static const char *const activity_names[ACTIVITIES] = {"active", "occasional", "dormant"};

struct cell {
	uint64_t members;
	int64_t outstanding, earned;
};

struct seg_change {
	const char *member;            /* in the books' string arena */
	uint64_t seq;
	int segment;
};

struct layering {
	const struct audit_opts *o;
	struct audit_books books;
	struct seg_change *segs;
	size_t n_segs, cap_segs;
	int64_t at_ms;
	struct cell cells[SEGMENTS][MATURITIES][ACTIVITIES];
	char err[1024];
};

static int note_segment(struct layering *y, const Tally__V1__Entry *e)
{
	const Tally__V1__Command *c = e->result != NULL &&
					      e->result->code == TALLY__V1__RESULT_CODE__OK
				      ? e->command
				      : NULL; /* a refused command changed no member */
	const char *member = NULL;
	int segment = 0;
	if (c != NULL && c->body_case == TALLY__V1__COMMAND__BODY_OPEN_MEMBER)
		member = c->open_member->id, segment = (int)c->open_member->segment;
	else if (c != NULL && c->body_case == TALLY__V1__COMMAND__BODY_UPDATE_MEMBER)
		member = c->update_member->id, segment = (int)c->update_member->segment;
	if (member == NULL)
		return 0;
	if (audit_grow((void **)&y->segs, &y->cap_segs, y->n_segs, sizeof(*y->segs)) != 0)
		return -1;
	const char *id = tally_arena_strdup(&y->books.strings, member);
	if (id == NULL)
		return -1;
	y->segs[y->n_segs++] = (struct seg_change){id, e->seq, segment >= 0 && segment < SEGMENTS ? segment : 0};
	return 0;
}

static int by_member_then_seq(const void *a, const void *b)
{
	const struct seg_change *x = a, *y = b;
	int c = strcmp(x->member, y->member);
	return c != 0 ? c : (x->seq < y->seq ? -1 : x->seq > y->seq);
}

/* The member's segment at the end of the walk (the last change). */
static int segment_of(const struct layering *y, const char *member)
{
	size_t lo = 0, hi = y->n_segs;
	while (lo < hi) { /* the first change after every change of members before it */
		size_t mid = lo + (hi - lo) / 2;
		if (strcmp(y->segs[mid].member, member) <= 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo > 0 && strcmp(y->segs[lo - 1].member, member) == 0 ? y->segs[lo - 1].segment : 0;
}

static bool layering_stop(void *ctx, const Tally__V1__Entry *e)
{
	const struct layering *y = ctx;
	return y->at_ms != 0 && e->time_ms > y->at_ms;
}

static int layering_each(void *ctx, const Tally__V1__Entry *e)
{
	return note_segment(ctx, e);
}

static int layering_read(struct layering *y)
{
	int rc = audit_walk(y->o->dir, &y->books, layering_stop, layering_each, y, y->err,
			    sizeof(y->err));
	if (y->at_ms == 0)
		y->at_ms = y->books.last_ms;
	return rc;
}

/* Places every member of the brand in its cell. */
static void layering_cells(struct layering *y)
{
	const struct audit_opts *o = y->o;
	qsort(y->segs, y->n_segs, sizeof(*y->segs), by_member_then_seq);
	for (size_t i = 0; i < y->books.n_accounts; i++) {
		const struct audit_account *a = &y->books.accounts[i];
		if (strcmp(a->brand, o->brand) != 0)
			continue;
		int64_t age = y->at_ms - a->first_ms;
		int64_t quiet = a->earn_events ? y->at_ms - a->last_earned_ms : age;
		int m = age < o->new_days * DAY_MS ? 0 : age < o->mature_days * DAY_MS ? 1 : 2;
		if (m > 0 && quiet >= o->lapse_days * DAY_MS)
			m = 3;
		int act = a->earn_events && quiet < o->active_days * DAY_MS       ? 0
			  : a->earn_events && quiet < o->occasional_days * DAY_MS ? 1
										  : 2;
		struct cell *c = &y->cells[segment_of(y, a->member)][m][act];
		c->members++;
		c->outstanding += a->available + a->held;
		c->earned += a->earned;
	}
}

static void layering_print(const struct layering *y)
{
	char when[40];
	tally_time_format(y->at_ms, when);
	if (y->o->json) {
		printf("{\"brand\":\"%s\",\"at\":\"%s\",\"cells\":[", y->o->brand, when);
		bool first = true;
		for (int s = 0; s < SEGMENTS; s++)
			for (int m = 0; m < MATURITIES; m++)
				for (int a = 0; a < ACTIVITIES; a++) {
					const struct cell *c = &y->cells[s][m][a];
					printf("%s{\"segment\":\"%s\",\"maturity\":\"%s\",\"activity\":"
					       "\"%s\",\"members\":%" PRIu64 ",\"outstanding\":%" PRId64
					       ",\"earned\":%" PRId64 "}", first ? "" : ",", segment_names[s],
					       maturity_names[m], activity_names[a], c->members,
					       c->outstanding, c->earned);
					first = false;
				}
		printf("]}\n");
		return;
	}
	if (y->o->csv)
		printf("brand,at,segment,maturity,activity,members,points_outstanding,points_earned\n");
	else
		printf("brand %s at %s\n%-18s %-9s %-11s %10s %14s %14s\n", y->o->brand, when, "segment",
		       "maturity", "activity", "members", "outstanding", "earned");
	for (int s = 0; s < SEGMENTS; s++)
		for (int m = 0; m < MATURITIES; m++)
			for (int a = 0; a < ACTIVITIES; a++) {
				const struct cell *c = &y->cells[s][m][a];
				if (y->o->csv)
					printf("%s,%s,%s,%s,%s,%" PRIu64 ",%" PRId64 ",%" PRId64 "\n",
					       y->o->brand, when, segment_names[s], maturity_names[m],
					       activity_names[a], c->members, c->outstanding, c->earned);
				else if (c->members > 0)
					printf("%-18s %-9s %-11s %10" PRIu64 " %14" PRId64 " %14" PRId64 "\n",
					       segment_names[s], maturity_names[m], activity_names[a],
					       c->members, c->outstanding, c->earned);
			}
}

/* A heat map of members per segment (rows) × maturity and activity (columns). */
static int layering_png(const struct layering *y)
{
	FILE *g = popen("gnuplot", "w");
	if (g == NULL)
		return -1;
	fprintf(g, "set terminal png size 1200,520 noenhanced\nset output '%s'\n", y->o->png);
	fprintf(g, "set title 'members of %s by segment, maturity and activity'\n", y->o->brand);
	fprintf(g, "set palette defined (0 'white', 1 '#fde0c5', 2 '#f59e72', 3 '#b3261e')\n");
	fprintf(g, "set xtics rotate by -40 font ',9'\nset ytics font ',9'\nunset key\n");
	fprintf(g, "set xtics (");
	for (int m = 0; m < MATURITIES; m++)
		for (int a = 0; a < ACTIVITIES; a++)
			fprintf(g, "%s'%s %s' %d", m + a ? ", " : "", maturity_names[m], activity_names[a],
				m * ACTIVITIES + a);
	fprintf(g, ")\nset ytics (");
	for (int s = 0; s < SEGMENTS; s++)
		fprintf(g, "%s'%s' %d", s ? ", " : "", segment_names[s], s);
	fprintf(g, ")\n$cells << EOD\n");
	for (int s = 0; s < SEGMENTS; s++)
		for (int m = 0; m < MATURITIES; m++)
			for (int a = 0; a < ACTIVITIES; a++)
				fprintf(g, "%d %d %" PRIu64 "\n", m * ACTIVITIES + a, s,
					y->cells[s][m][a].members);
	fprintf(g, "EOD\nplot $cells using 1:2:3 with image, "
		   "$cells using 1:2:($3 > 0 ? sprintf('%%d', $3) : '') with labels font ',9'\n");
	return pclose(g) == 0 ? 0 : -1;
}

int audit_layering(const struct audit_opts *o)
{
	if (o->brand == NULL) {
		fprintf(stderr, "tally-audit: layering needs --brand B\n");
		return AUDIT_EXIT_USAGE;
	}
	struct layering *y = calloc(1, sizeof(*y));
	if (y == NULL)
		return AUDIT_EXIT_FAILED;
	y->o = o;
	uint64_t seq_unused = 0;
	int rc = 0;
	if (o->at != NULL && (audit_parse_at(o->at, &seq_unused, &y->at_ms) != 0 || seq_unused)) {
		fprintf(stderr, "tally-audit: --at: an RFC 3339 time (2026-11-30T12:00:00Z)\n");
		rc = AUDIT_EXIT_USAGE;
	} else if (audit_books_init(&y->books, y->err, sizeof(y->err)) != 0 || layering_read(y) != 0) {
		rc = AUDIT_EXIT_FAILED;
	} else {
		layering_cells(y);
		layering_print(y);
		if (o->png != NULL && layering_png(y) != 0) {
			snprintf(y->err, sizeof(y->err), "gnuplot could not draw %s (make deps installs "
				 "gnuplot-nox)", o->png);
			rc = AUDIT_EXIT_FAILED;
		}
	}
	if (rc == AUDIT_EXIT_FAILED)
		fprintf(stderr, "tally-audit: layering: %s\n", y->err);
	audit_books_free(&y->books);
	free(y->segs);
	free(y);
	return rc;
}
