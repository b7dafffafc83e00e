/*
 * tally-audit's progress bar and --at argument (audit.h).
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tools/audit/audit.h"

static bool progress_shown;

double audit_now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void audit_progress(const char *what, uint64_t done, uint64_t total)
{
	static double last;
	if (!isatty(STDERR_FILENO))
		return;
	double now = audit_now_s();
	if (now - last < 0.1 && done != total)
		return;
	last = now;
	progress_shown = true;
	if (total == 0) {
		fprintf(stderr, "\r%s: %llu", what, (unsigned long long)done);
		return;
	}
	unsigned width = 40, filled = (unsigned)(done * width / (total ? total : 1));
	char bar[41];
	for (unsigned i = 0; i < width; i++)
		bar[i] = i < filled ? '#' : '.';
	bar[width] = '\0';
	fprintf(stderr, "\r%s [%s] %llu/%llu %3u%%", what, bar, (unsigned long long)done,
		(unsigned long long)total, (unsigned)(done * 100 / total));
}

void audit_progress_done(void)
{
	if (progress_shown)
		fputc('\n', stderr);
	progress_shown = false;
}

int audit_parse_at(const char *s, uint64_t *seq, int64_t *time_ms)
{
	*seq = 0;
	*time_ms = 0;
	if (s[0] != '\0' && strspn(s, "0123456789") == strlen(s)) {
		*seq = strtoull(s, NULL, 10);
		return *seq > 0 ? 0 : -1;
	}
	char err[160];
	return tally_time_parse(s, time_ms, err, sizeof(err)) && *time_ms > 0 ? 0 : -1;
}

