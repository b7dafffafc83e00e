/* Calendar arithmetic on UTC, integers only (proleptic Gregorian calendar). */
#include <assert.h>

#include "ledger/internal.h"

static int64_t floor_div(int64_t a, int64_t b)
{
	assert(b > 0);
	int64_t q = a / b;
	return (a % b < 0) ? q - 1 : q;
}

int64_t day_of(int64_t time_ms)
{
	return floor_div(time_ms, MS_PER_DAY);
}

/* Days since 1970-01-01 of a civil date; era-based so it needs no tables. */
static int64_t days_from_civil(int64_t y, int64_t m, int64_t d)
{
	assert(m >= 1 && m <= 12);
	assert(d >= 1 && d <= 31);
	y -= m <= 2;
	int64_t era = floor_div(y, 400);
	int64_t yoe = y - era * 400;                                  /* [0, 399] */
	int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1; /* [0, 365] */
	int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;          /* [0, 146096] */
	return era * 146097 + doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, int64_t *m, int64_t *d)
{
	z += 719468;
	int64_t era = floor_div(z, 146097);
	int64_t doe = z - era * 146097;
	int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	int64_t mp = (5 * doy + 2) / 153;
	*d = doy - (153 * mp + 2) / 5 + 1;
	*m = mp + (mp < 10 ? 3 : -9);
	*y = yoe + era * 400 + (*m <= 2);
	assert(*m >= 1 && *m <= 12);
}

static int64_t days_in_month(int64_t y, int64_t m)
{
	static const int8_t days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
	bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
	return (m == 2 && leap) ? 29 : days[m - 1];
}

/* The same time of day `months` calendar months later; a day past the end of the
 * target month is clamped to its last day (Jan 31 + 1 month = Feb 28/29). */
int64_t add_months(int64_t time_ms, uint32_t months)
{
	assert(months <= TALLY_EXPIRY_MONTHS_MAX);
	int64_t day = day_of(time_ms);
	int64_t ms_of_day = time_ms - day * MS_PER_DAY;
	int64_t y, m, d;
	civil_from_days(day, &y, &m, &d);
	int64_t total = y * 12 + (m - 1) + months;
	y = floor_div(total, 12);
	m = total - y * 12 + 1;
	int64_t dim = days_in_month(y, m);
	if (d > dim)
		d = dim;
	return days_from_civil(y, m, d) * MS_PER_DAY + ms_of_day;
}

/* The first millisecond of the month after the one time_ms falls in, or time_ms itself
 * when it is the first millisecond of its month: a lot expiring then is held through
 * the end of time_ms's month, never less long. */
int64_t month_ceil(int64_t time_ms)
{
	int64_t day = day_of(time_ms);
	int64_t y, m, d;
	civil_from_days(day, &y, &m, &d);
	int64_t first = days_from_civil(y, m, 1) * MS_PER_DAY; /* of time_ms's month */
	int64_t ceil = first == time_ms ? first : add_months(first, 1);
	assert(ceil >= time_ms);
	return ceil;
}
