/*
 * rpc/units — times and money as people write them, for tools and client programs.
 *
 * The ledger counts time in UNIX milliseconds (UTC) and money in micros (millionths of
 * a currency unit). People read and type RFC 3339 times ("2026-12-01T00:00:00Z") and
 * amounts with their currency ("60.00 CNY"). Part of libtally (rpc/tally.h's
 * companion); nothing here touches the network or the ledger.
 */
#ifndef TALLY_RPC_UNITS_H
#define TALLY_RPC_UNITS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* "2026-12-01T00:00:00.250Z": the longest a formatted time is, with its NUL. */
#define TALLY_TIME_BYTES 32
/* "-85070591730234615865843651857942.052864 ABC" (the most a 64-bit balance times a
 * 64-bit point value can be): the longest a formatted amount is, with its NUL. */
#define TALLY_MONEY_BYTES 48

/* Parses an RFC 3339 date-time: YYYY-MM-DD, 'T' (or 't' or a space), hh:mm:ss, an
 * optional fraction of a second, and 'Z' (or 'z') or an offset ±hh:mm; years 1970 to
 * 9999. A fraction finer than a millisecond must end in zeros (the ledger counts
 * milliseconds; nothing is rounded away). Also takes a plain integer: UNIX ms, as the
 * ledger writes them. Returns true and sets *ms, or false with why in err. */
bool tally_time_parse(const char *s, int64_t *ms, char *err, size_t errcap);

/* Formats UNIX ms as RFC 3339 in UTC with milliseconds: "2026-12-01T08:30:00.250Z",
 * "2026-12-01T00:00:00.000Z". Returns out. */
char *tally_time_format(int64_t ms, char out[TALLY_TIME_BYTES]);

/* The minor units of an ISO 4217 currency: 2 for most, 0 for JPY and its kind, 3 for
 * BHD and its kind, 4 for CLF and UYW. */
unsigned tally_currency_minor_units(const char *currency);

/* Formats micros of `currency` as "60.00 CNY": at least the currency's minor units
 * after the point, more when the amount has finer digits (never rounded), then the
 * code. An empty or NULL currency gives the number alone. Returns out. */
char *tally_money_format(int64_t micros, const char *currency, char out[TALLY_MONEY_BYTES]);

/* The same for points x micros per point, computed in 128 bits (a balance times a
 * point value may pass 64). Returns out. */
char *tally_money_of_points(int64_t points, int64_t point_micros, const char *currency,
			    char out[TALLY_MONEY_BYTES]);

#endif
