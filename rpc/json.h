/*
 * rpc/json — reading the flat JSON objects Tally writes for people and other
 * programs (checkpoint files, statements): a field's value by name, as a number, a
 * hex string or a string. Not a general parser: the text is searched for "name"
 * followed by a colon, and the first such field is taken, so a caller looks for a
 * field in the part of a document (one object) that holds it. Strings may use the
 * escapes \" and \\ (what tally_json_write_str writes), nothing else.
 */
#ifndef TALLY_RPC_JSON_H
#define TALLY_RPC_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Where the value of field `name` starts in text (after the colon and blanks), or NULL. */
const char *tally_json_value(const char *text, const char *name);
bool tally_json_u64(const char *text, const char *name, uint64_t *out);
bool tally_json_i64(const char *text, const char *name, int64_t *out);
/* A string value of exactly 2n hex digits at v (its opening quote) into n bytes. */
bool tally_json_hex_at(const char *v, uint8_t *out, size_t n);
/* An array of hex strings of 32 bytes each at v (its '['): at most cap into out. */
bool tally_json_hashes(const char *v, uint8_t out[][32], size_t cap, size_t *n);
/* A string value into out (NUL-terminated); false when missing or longer than cap - 1. */
bool tally_json_str(const char *text, const char *name, char *out, size_t cap);
/* s as a JSON string, quotes included, escaping '"', '\\' and control bytes. */
void tally_json_write_str(FILE *f, const char *s);

#endif
