/*
 * tallyctl import — legacy balances from a CSV file into a brand (tools/ctl/import.c).
 *
 * One line per balance: member,points,expiry,segment[,reference]. expiry is a date
 * (the points are good through that day, UTC), an RFC 3339 time, or empty (never);
 * segment as `member open` takes it. A first line starting with "member," is a
 * header. Fields hold no commas (no quoting).
 *
 * Each line becomes an OpenMember (an existing member is kept as it is) and an
 * ImportPoints, IMPORT_BATCH_LINES lines to a batch request. Request ids come from the
 * file's SHA-256 and the line number, so a line sent twice is applied once. FILE.import
 * records the file's hash and the last line every line before it was answered for;
 * running the same import again resumes after it. Lines refused (by the parser or the
 * ledger) go to FILE.rejected.csv with the reason.
 */
#ifndef TALLY_TOOLS_CTL_IMPORT_H
#define TALLY_TOOLS_CTL_IMPORT_H

#include <stdbool.h>

#include "rpc/tally.h"

#define IMPORT_BATCH_LINES 1000
#define IMPORT_LINE_BYTES_MAX 1024
#define IMPORT_RETRIES 5 /* resends of commands whose outcome was not definite */

/* The segment named in lower case ("owner_passenger"), or SEGMENT_UNSPECIFIED (0):
 * for import's lines and tallyctl's --segment alike. */
Tally__V1__Segment ctl_segment_named(const char *s);

/* Runs the import; returns tallyctl's exit status: 0 every line imported (or there
 * already), 1 some lines refused (see the report), 2 the file cannot be read, 3 not
 * finished because the cluster did not answer (run it again to resume), 4 the same
 * with an outcome unknown. Progress goes to stderr, the summary to stdout (one JSON
 * object with json). */
int ctl_import(struct tally_client *client, const char *brand, const char *path, bool json);

#endif
