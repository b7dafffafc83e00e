/*
 * tally-audit's checkpoint files: DIR/checkpoints/<tree_size>.json (audit.h).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rpc/files.h"
#include "tools/audit/audit.h"

/* The tree size a checkpoint file's name states; 0 when it is not one. */
static uint64_t name_size(const char *name)
{
	unsigned long long n;
	char tail[8];
	if (sscanf(name, "%20llu.%7s", &n, tail) != 2 || strcmp(tail, "json") != 0)
		return 0;
	return n;
}

static int by_size(const void *a, const void *b)
{
	uint64_t x = ((const struct audit_checkpoint *)a)->c.tree_size;
	uint64_t y = ((const struct audit_checkpoint *)b)->c.tree_size;
	return x < y ? -1 : x > y;
}

static int load_one(const char *path, const char *name, struct audit_checkpoint *cp, char *err,
		    size_t errcap)
{
	char text[TALLY_CHECKPOINT_JSON_BYTES_MAX + 1];
	FILE *f = fopen(path, "r");
	size_t n = f != NULL ? fread(text, 1, TALLY_CHECKPOINT_JSON_BYTES_MAX + 1, f) : 0;
	if (f == NULL || ferror(f) || n > TALLY_CHECKPOINT_JSON_BYTES_MAX) {
		snprintf(err, errcap, "%s: %s", path, f == NULL ? strerror(errno) : "unreadable or too long");
		if (f != NULL)
			fclose(f);
		return -1;
	}
	fclose(f);
	text[n] = '\0';
	char why[128];
	snprintf(cp->file, sizeof(cp->file), "checkpoints/%.40s", name);
	if (tally_checkpoint_parse_json(text, &cp->c, &cp->p, why, sizeof(why)) != 0) {
		snprintf(err, errcap, "%s: %s", cp->file, why);
		return -1;
	}
	if (cp->c.tree_size != name_size(name)) {
		snprintf(err, errcap, "%s: its tree_size is %" PRIu64, cp->file, cp->c.tree_size);
		return -1;
	}
	return 0;
}

int audit_checkpoints_load(const char *dir, struct audit_checkpoint **out, size_t *n,
			   char *err, size_t errcap)
{
	char cdir[AUDIT_PATH_BYTES];
	snprintf(cdir, sizeof(cdir), "%s/checkpoints", dir);
	*out = NULL;
	*n = 0;
	DIR *d = opendir(cdir);
	if (d == NULL) {
		snprintf(err, errcap, "%s: %s", cdir, strerror(errno));
		return -1;
	}
	struct audit_checkpoint *all = calloc(AUDIT_CHECKPOINTS_MAX, sizeof(*all));
	int rc = all != NULL ? 0 : -1;
	if (all == NULL)
		snprintf(err, errcap, "out of memory");
	for (struct dirent *e; rc == 0 && (e = readdir(d)) != NULL;) {
		if (e->d_name[0] == '.' || name_size(e->d_name) == 0)
			continue;
		if (*n == AUDIT_CHECKPOINTS_MAX) {
			snprintf(err, errcap, "%s: more than %d checkpoints", cdir, AUDIT_CHECKPOINTS_MAX);
			rc = -1;
			break;
		}
		char path[2 * AUDIT_PATH_BYTES];
		snprintf(path, sizeof(path), "%s/%s", cdir, e->d_name);
		rc = load_one(path, e->d_name, &all[*n], err, errcap);
		if (rc == 0)
			++*n;
	}
	closedir(d);
	if (rc != 0) {
		free(all);
		*n = 0;
		return -1;
	}
	qsort(all, *n, sizeof(*all), by_size);
	*out = all;
	return 0;
}

uint64_t audit_checkpoint_last(const char *dir)
{
	char cdir[AUDIT_PATH_BYTES];
	snprintf(cdir, sizeof(cdir), "%s/checkpoints", dir);
	DIR *d = opendir(cdir);
	uint64_t last = 0;
	for (struct dirent *e; d != NULL && (e = readdir(d)) != NULL;)
		if (name_size(e->d_name) > last)
			last = name_size(e->d_name);
	if (d != NULL)
		closedir(d);
	return last;
}

int audit_checkpoint_save(const char *dir, const struct tally_checkpoint *c,
			  const struct tally_checkpoint_proof *p, char *err, size_t errcap)
{
	char cdir[AUDIT_PATH_BYTES], path[AUDIT_PATH_BYTES + 64];
	snprintf(cdir, sizeof(cdir), "%s/checkpoints", dir);
	snprintf(path, sizeof(path), "%s/%" PRIu64 ".json", cdir, c->tree_size);
	if (mkdir(cdir, 0755) != 0 && errno != EEXIST) {
		snprintf(err, errcap, "%s: %s", cdir, strerror(errno));
		return -1;
	}
	struct stat st;
	if (stat(path, &st) == 0)
		return 0; /* a checkpoint of this size is kept: its proof links it to the one before */
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	if (f == NULL) {
		snprintf(err, errcap, "%s: %s", path, strerror(errno));
		return -1;
	}
	tally_checkpoint_write_json(c, p, f);
	int rc = -1;
	if (fclose(f) == 0)
		rc = tally_file_replace(path, text, len, 0644, err, errcap);
	else
		snprintf(err, errcap, "%s: out of memory", path);
	free(text);
	return rc;
}
