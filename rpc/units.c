/*
 * rpc/units — RFC 3339 times and amounts with their currency (see units.h).
 */
#include "rpc/units.h"

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MS_PER_S 1000
#define S_PER_DAY 86400
#define UNITS_YEAR_MIN 1970
#define UNITS_YEAR_MAX 9999
#define UNITS_FRACTION_DIGITS_MAX 9 /* nanoseconds: the finest RFC 3339 writers use */

/* n decimal digits at *p into *v; advances *p. False when they are not all digits. */
static bool digits(const char **p, unsigned n, int *v)
{
	int x = 0;
	for (unsigned i = 0; i < n; i++) {
		if (!isdigit((unsigned char)(*p)[i]))
			return false;
		x = x * 10 + ((*p)[i] - '0');
	}
	*p += n;
	*v = x;
	return true;
}

static bool expect(const char **p, const char *any_of)
{
	if (**p == '\0' || strchr(any_of, **p) == NULL)
		return false;
	(*p)++;
	return true;
}

static bool leap(int y)
{
	return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int days_in_month(int y, int m)
{
	static const int days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
	return m == 2 && leap(y) ? 29 : days[m - 1];
}

/* ".250" or nothing: the milliseconds; false when finer digits are not zeros. */
static bool fraction(const char **p, int *ms, const char **why)
{
	*ms = 0;
	if (**p != '.')
		return true;
	(*p)++;
	unsigned n = 0;
	for (; isdigit((unsigned char)**p); (*p)++, n++) {
		if (n >= UNITS_FRACTION_DIGITS_MAX) {
			*why = "more than 9 digits of a second";
			return false;
		}
		int d = **p - '0';
		if (n < 3)
			*ms = *ms * 10 + d;
		else if (d != 0) {
			*why = "finer than a millisecond (the ledger counts milliseconds)";
			return false;
		}
	}
	if (n == 0) {
		*why = "a '.' without digits";
		return false;
	}
	for (; n < 3; n++)
		*ms *= 10;
	return true;
}

/* 'Z' or ±hh:mm: the offset east of UTC in seconds. */
static bool offset(const char **p, long *east_s, const char **why)
{
	*east_s = 0;
	if (expect(p, "Zz"))
		return true;
	char sign = **p;
	int oh, om;
	if (!expect(p, "+-") || !digits(p, 2, &oh) || !expect(p, ":") || !digits(p, 2, &om) ||
	    oh > 23 || om > 59) {
		*why = "expected Z or an offset +hh:mm";
		return false;
	}
	*east_s = (sign == '-' ? -1L : 1L) * (oh * 3600L + om * 60L);
	return true;
}

/* A plain integer: UNIX ms. */
static bool unix_ms(const char *s, int64_t *ms)
{
	if (*s == '\0' || strspn(s, "0123456789") != strlen(s))
		return false;
	errno = 0;
	char *end;
	long long v = strtoll(s, &end, 10);
	if (errno != 0 || *end != '\0')
		return false;
	*ms = v;
	return true;
}

bool tally_time_parse(const char *s, int64_t *ms, char *err, size_t errcap)
{
	assert(s != NULL && ms != NULL && err != NULL);
	if (unix_ms(s, ms))
		return true;
	const char *p = s, *why = "expected YYYY-MM-DDThh:mm:ssZ (RFC 3339) or UNIX ms";
	int y, mo, d, h, mi, sec, milli;
	long east;
	bool ok = digits(&p, 4, &y) && expect(&p, "-") && digits(&p, 2, &mo) && expect(&p, "-") &&
		  digits(&p, 2, &d) && expect(&p, "Tt ") && digits(&p, 2, &h) && expect(&p, ":") &&
		  digits(&p, 2, &mi) && expect(&p, ":") && digits(&p, 2, &sec) &&
		  fraction(&p, &milli, &why) && offset(&p, &east, &why);
	if (ok && *p != '\0') {
		ok = false;
		why = "text after the time";
	}
	if (ok && (y < UNITS_YEAR_MIN || y > UNITS_YEAR_MAX || mo < 1 || mo > 12 || d < 1 ||
		   d > days_in_month(y, mo) || h > 23 || mi > 59 || sec > 60)) {
		ok = false;
		why = "a field out of range (years 1970 to 9999)";
	}
	if (!ok) {
		snprintf(err, errcap, "time '%.40s': %s", s, why);
		return false;
	}
	struct tm tm = {.tm_year = y - 1900, .tm_mon = mo - 1, .tm_mday = d, .tm_hour = h,
			.tm_min = mi, .tm_sec = sec};
	int64_t t = (int64_t)timegm(&tm) - east; /* a leap second (:60) is the next second */
	if (t < 0) {
		snprintf(err, errcap, "time '%.40s': before 1970-01-01T00:00:00Z", s);
		return false;
	}
	*ms = t * MS_PER_S + milli;
	return true;
}

char *tally_time_format(int64_t ms, char out[TALLY_TIME_BYTES])
{
	assert(out != NULL);
	int64_t s = ms / MS_PER_S, milli = ms % MS_PER_S;
	if (milli < 0) {
		s--;
		milli += MS_PER_S;
	}
	time_t t = (time_t)s;
	struct tm tm;
	char base[24];
	if (gmtime_r(&t, &tm) == NULL || strftime(base, sizeof(base), "%Y-%m-%dT%H:%M:%S", &tm) == 0)
		snprintf(out, TALLY_TIME_BYTES, "%lld ms", (long long)ms);
	else
		snprintf(out, TALLY_TIME_BYTES, "%s.%03dZ", base, (int)milli);
	return out;
}

unsigned tally_currency_minor_units(const char *currency)
{
	static const char *const none[] = {"BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW",
					   "PYG", "RWF", "UGX", "UYI", "VND", "VUV", "XAF", "XOF",
					   "XPF"};
	static const char *const three[] = {"BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"};
	static const char *const four[] = {"CLF", "UYW"};
	if (currency == NULL)
		return 2;
	for (size_t i = 0; i < sizeof(none) / sizeof(none[0]); i++)
		if (strcmp(currency, none[i]) == 0)
			return 0;
	for (size_t i = 0; i < sizeof(three) / sizeof(three[0]); i++)
		if (strcmp(currency, three[i]) == 0)
			return 3;
	for (size_t i = 0; i < sizeof(four) / sizeof(four[0]); i++)
		if (strcmp(currency, four[i]) == 0)
			return 4;
	return 2;
}

char *tally_money_of_points(int64_t points, int64_t point_micros, const char *currency,
			    char out[TALLY_MONEY_BYTES])
{
	assert(out != NULL);
	__int128 micros = (__int128)points * point_micros;
	bool negative = micros < 0;
	unsigned __int128 mag = negative ? (unsigned __int128)0 - (unsigned __int128)micros
					 : (unsigned __int128)micros;
	unsigned __int128 whole = mag / 1000000u;
	unsigned frac = (unsigned)(mag % 1000000u);
	char w[48], *at = w + sizeof(w); /* the whole part's digits, from the right */
	*--at = '\0';
	do {
		*--at = (char)('0' + (int)(whole % 10u));
		whole /= 10u;
	} while (whole > 0);
	char f[8];
	snprintf(f, sizeof(f), "%06u", frac);
	unsigned keep = 6; /* the fraction's digits to show: the minor units, or more */
	unsigned minor = tally_currency_minor_units(currency);
	while (keep > minor && f[keep - 1] == '0')
		keep--;
	f[keep] = '\0';
	bool code = currency != NULL && currency[0] != '\0';
	snprintf(out, TALLY_MONEY_BYTES, "%s%s%s%s%s%.3s", negative ? "-" : "", at,
		 keep > 0 ? "." : "", f, code ? " " : "", code ? currency : "");
	return out;
}

char *tally_money_format(int64_t micros, const char *currency, char out[TALLY_MONEY_BYTES])
{
	return tally_money_of_points(micros, 1, currency, out);
}
