/*
 * rpc/json — field reader for Tally's own flat JSON (json.h).
 */
#include "rpc/json.h"

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "rpc/checkpoint.h"

const char *tally_json_value(const char *text, const char *name)
{
	assert(text != NULL && name != NULL);
	size_t len = strlen(name);
	for (const char *at = strchr(text, '"'); at != NULL; at = strchr(at + 1, '"')) {
		if (strncmp(at + 1, name, len) != 0 || at[len + 1] != '"')
			continue;
		const char *v = at + len + 2;
		while (isspace((unsigned char)*v))
			v++;
		if (*v != ':')
			continue;
		v++;
		while (isspace((unsigned char)*v))
			v++;
		return v;
	}
	return NULL;
}

static bool number_end(const char *end)
{
	return *end == ',' || *end == '}' || *end == ']' || isspace((unsigned char)*end);
}

bool tally_json_u64(const char *text, const char *name, uint64_t *out)
{
	const char *v = tally_json_value(text, name);
	if (v == NULL || !isdigit((unsigned char)*v))
		return false;
	char *end;
	errno = 0;
	unsigned long long x = strtoull(v, &end, 10);
	*out = x;
	return errno == 0 && number_end(end);
}

bool tally_json_i64(const char *text, const char *name, int64_t *out)
{
	const char *v = tally_json_value(text, name);
	if (v == NULL || !(isdigit((unsigned char)*v) || (*v == '-' && isdigit((unsigned char)v[1]))))
		return false;
	char *end;
	errno = 0;
	long long x = strtoll(v, &end, 10);
	*out = x;
	return errno == 0 && number_end(end);
}

bool tally_json_hex_at(const char *v, uint8_t *out, size_t n)
{
	if (v == NULL || *v != '"')
		return false;
	const char *end = strchr(v + 1, '"');
	return end != NULL && tally_hex_decode(v + 1, (size_t)(end - v - 1), out, n) == 0;
}

bool tally_json_hashes(const char *v, uint8_t out[][32], size_t cap, size_t *n)
{
	*n = 0;
	if (v == NULL || *v != '[')
		return false;
	for (v++;;) {
		while (isspace((unsigned char)*v) || *v == ',')
			v++;
		if (*v == ']')
			return true;
		if (*n == cap || !tally_json_hex_at(v, out[*n], 32))
			return false;
		++*n;
		v = strchr(v + 1, '"') + 1;
	}
}

bool tally_json_str(const char *text, const char *name, char *out, size_t cap)
{
	const char *v = tally_json_value(text, name);
	if (v == NULL || *v != '"' || cap == 0)
		return false;
	size_t n = 0;
	for (v++; *v != '"'; v++) {
		if (*v == '\0' || n + 1 >= cap)
			return false;
		if (*v == '\\') {
			v++;
			if (*v != '"' && *v != '\\')
				return false;
		}
		out[n++] = *v;
	}
	out[n] = '\0';
	return true;
}

void tally_json_write_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s != '\0'; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c < 0x20)
			fprintf(f, "\\u%04x", c);
		else
			fputc(c, f);
	}
	fputc('"', f);
}
